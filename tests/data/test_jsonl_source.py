"""jsonl:PATH — text fields and a numeric target a line (prompt, response, score): loading, splits,
target choice, rendering, every bad input naming file and line, and the predict side (a checkpoint
trained on it takes its text fields as input columns)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlreg.data import DataConfig, Dataset, known_sources, load_dataset, render_prompts, show_dataset
from rlreg.data.rows import read_rows
from rlreg.data.splits import Splits
from rlreg.errors import ConfigError, DataError
from conftest import TINY

GRM_TEMPLATE = "{prompt}\n{response}\nScore:"


def write_jsonl(path: Path, rows: list, *, blank_after: int | None = None) -> Path:
    """One JSON value a line (objects, or anything else to test refusals)."""
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "   ")
    path.write_text("\n".join(lines) + "\n")
    return path


def grm_rows(n: int) -> list[dict]:
    return [{"prompt": f"Question {i}: what is {i} + {i}?", "response": f"It is {2 * i}.",
             "score": float(i % 10)} for i in range(n)]


def load(path: Path, **kw) -> Dataset:
    return load_dataset(DataConfig(source=f"jsonl:{path}", **kw))


def error_of(path: Path, **kw) -> str:
    with pytest.raises(DataError) as err:
        load(path, **kw)
    return str(err.value)


# --- loading ---------------------------------------------------------------------------------

def test_registered_as_a_source():
    assert "jsonl" in known_sources()


def test_loads_fields_in_file_order_and_last_key_as_target(tmp_path: Path):
    path = write_jsonl(tmp_path / "grm.jsonl", grm_rows(5))
    ds = load(path, val_fraction=0.0, test_fraction=0.0)
    assert ds.kind == "text" and ds.target_name == "score" and ds.name == "grm"
    assert list(ds.text_fields) == ["prompt", "response"]
    assert ds.text_fields["response"] == [f"It is {2 * i}." for i in range(5)]
    np.testing.assert_array_equal(ds.y, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(ds.row_ids, np.arange(5))
    assert ds.source_path == str(path) and ds.summary()["text_fields"] == ["prompt", "response"]
    # texts (what the classical baselines read) is derived: the default rendering
    assert ds.texts[2] == "prompt: Question 2: what is 2 + 2?\nresponse: It is 4."


def test_values_written_as_training_prompts_need(tmp_path: Path):
    rows = [{"prompt": "  two  spaces\nand a line  ", "n": 3.14159, "k": 7, "ok": True, "score": 1},
            {"prompt": "", "n": -0.5, "k": 12345678, "ok": False, "score": 2}]
    ds = load(write_jsonl(tmp_path / "v.jsonl", rows), val_fraction=0.0, test_fraction=0.0,
              float_format="{:.2f}")
    assert ds.text_fields["prompt"] == ["  two  spaces\nand a line  ", ""]  # strings as they are
    assert ds.text_fields["n"] == ["3.14", "-0.50"]  # numbers with data.float_format
    assert ds.text_fields["k"] == ["7.00", "12345678.00"]
    assert ds.text_fields["ok"] == ["true", "false"]  # booleans as JSON writes them


def test_target_by_name_keeps_the_other_fields_in_order(tmp_path: Path):
    rows = [{"prompt": "p", "quality": i, "response": "r", "tokens": 10 + i} for i in range(4)]
    ds = load(write_jsonl(tmp_path / "t.jsonl", rows), target="quality", val_fraction=0.0,
              test_fraction=0.0)
    assert ds.target_name == "quality" and list(ds.text_fields) == ["prompt", "response", "tokens"]
    np.testing.assert_array_equal(ds.y, [0, 1, 2, 3])
    assert ds.text_fields["tokens"] == ["10", "11", "12", "13"]


def test_blank_lines_skipped_and_a_bom_is_not_part_of_the_first_key(tmp_path: Path):
    path = tmp_path / "b.jsonl"
    path.write_text("\ufeff" + json.dumps({"text": "a", "y": 1}) + "\n\n  \n" + json.dumps({"text": "b", "y": 2})
                    + "\n", encoding="utf-8")
    ds = load(path, val_fraction=0.0, test_fraction=0.0)
    assert list(ds.text_fields) == ["text"] and ds.text_fields["text"] == ["a", "b"]


def test_relative_path_is_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "r.jsonl", grm_rows(4))
    monkeypatch.chdir(tmp_path)
    assert load(Path("sub/r.jsonl")).n_rows == 4


# --- splits and subsampling ------------------------------------------------------------------

def test_seeded_splits_partition_and_are_reproducible(tmp_path: Path):
    path = write_jsonl(tmp_path / "s.jsonl", grm_rows(50))
    ds = load(path, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert ds.splits.sizes() == {"train": 36, "val": 4, "test": 10} and not ds.splits.official
    joined = np.concatenate([ds.splits.train, ds.splits.val, ds.splits.test])
    assert sorted(joined.tolist()) == list(range(50))
    again = load(path, val_fraction=0.1, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again.splits.test, ds.splits.test)
    other = load(path, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert not np.array_equal(other.splits.test, ds.splits.test)


def test_max_rows_subsamples_and_keeps_rows_aligned(tmp_path: Path):
    ds = load(write_jsonl(tmp_path / "m.jsonl", grm_rows(40)), max_rows=12)
    assert ds.n_rows == 12 and any("subsampled to 12 of 40" in note for note in ds.notes)
    for i, source_row in enumerate(ds.row_ids):  # each kept row's fields and target stay together
        assert ds.text_fields["response"][i] == f"It is {2 * source_row}."
        assert ds.y[i] == float(source_row % 10)


def test_missing_rows_dropped_under_drop(tmp_path: Path):
    rows = grm_rows(6)
    rows[1]["score"] = None
    rows[3]["response"] = None
    ds = load(write_jsonl(tmp_path / "d.jsonl", rows), missing="drop", val_fraction=0.0, test_fraction=0.0)
    np.testing.assert_array_equal(ds.row_ids, [0, 2, 4, 5])
    assert any("dropped 2 rows" in note for note in ds.notes)


# --- rendering -------------------------------------------------------------------------------

def test_default_render_is_labelled_lines_with_whitespace_kept(tmp_path: Path):
    rows = [{"prompt": "Write code", "response": "def f():\n    return 1", "score": 5}]
    ds = load(write_jsonl(tmp_path / "r.jsonl", rows), val_fraction=0.0, test_fraction=0.0)
    assert render_prompts(ds, [0]) == ["prompt: Write code\nresponse: def f():\n    return 1"]


def test_template_is_filled_with_the_fields(tmp_path: Path):
    ds = load(write_jsonl(tmp_path / "r.jsonl", grm_rows(3)), val_fraction=0.0, test_fraction=0.0)
    out = render_prompts(ds, [2, 0], DataConfig(prompt_template=GRM_TEMPLATE))
    assert out == ["Question 2: what is 2 + 2?\nIt is 4.\nScore:", "Question 0: what is 0 + 0?\nIt is 0.\nScore:"]


def test_template_unknown_field_lists_the_fields(tmp_path: Path):
    ds = load(write_jsonl(tmp_path / "r.jsonl", grm_rows(3)), val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(ConfigError, match=r"\{answer\}.*available: prompt, response"):
        render_prompts(ds, [0], DataConfig(prompt_template="{prompt} {answer}"))


def test_sqlcard_style_text_rows_unchanged(tmp_path: Path):
    (tmp_path / "w.sql").write_text("SELECT  COUNT(*)\tFROM t a;\n" * 3)
    (tmp_path / "w.csv").write_text("t a##x#5\n" * 3)
    ds = load_dataset(DataConfig(source=f"sqlcard:{tmp_path / 'w'}", val_fraction=0.0))
    assert ds.text_fields is None and ds.summary()["text_fields"] is None
    assert render_prompts(ds, [0]) == ["SELECT COUNT(*) FROM t a;"]
    assert render_prompts(ds, [0], DataConfig(prompt_template="Q: {text}")) == ["Q: SELECT COUNT(*) FROM t a;"]


def test_show_lists_fields_and_previews_one_line_per_row(tmp_path: Path):
    rows = [{"prompt": "p" * 30, "response": "line one\nline two", "score": 3}] * 4
    text = show_dataset(DataConfig(source=f"jsonl:{write_jsonl(tmp_path / 'w.jsonl', rows)}"))
    assert "text fields: 2 (prompt, response)" in text
    assert "'prompt': 30 chars on average, longest 30" in text and "target: score" in text
    preview = [line for line in text.splitlines() if line.startswith("  [")]
    assert len(preview) == 4 and "response: line one\\nline two  ->  3" in preview[0]


# --- the Dataset shape -----------------------------------------------------------------------

def _splits(n: int) -> Splits:
    return Splits(train=np.arange(n), val=np.empty(0, np.int64), test=np.empty(0, np.int64))


def test_dataset_validates_text_fields():
    base = dict(name="d", features=None, feature_names=[], y=np.zeros(2), target_name="y", splits=_splits(2))
    with pytest.raises(DataError, match="text field 'b' has 1 values for 2 targets"):
        Dataset(kind="text", texts=None, text_fields={"a": ["x", "y"], "b": ["z"]}, **base)
    with pytest.raises(DataError, match="text field 'a' holds 3"):
        Dataset(kind="text", texts=None, text_fields={"a": ["x", 3]}, **base)
    with pytest.raises(DataError, match="texts disagree with text_fields"):
        Dataset(kind="text", texts=["x", "y"], text_fields={"a": ["x", "y"]}, **base)
    with pytest.raises(DataError, match="at least one field"):
        Dataset(kind="text", texts=None, text_fields={}, **base)
    with pytest.raises(DataError, match="tabular dataset has no text_fields"):
        Dataset(kind="tabular", texts=None, text_fields={"a": ["x", "y"]},
                **{**base, "features": np.zeros((2, 1)), "feature_names": ["f"]})


# --- bad input: each names the file and the line ----------------------------------------------

def test_bad_input_not_json_names_the_line_after_blank_lines(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"p": "a", "y": 1}) + "\n\n" + '{"p": "b", "y": 2\n')
    msg = error_of(path)
    assert f"{path}, line 3: not valid JSON" in msg


def test_bad_input_not_an_object(tmp_path: Path):
    msg = error_of(write_jsonl(tmp_path / "bad.jsonl", [{"p": "a", "y": 1}, ["b", 2]]))
    assert f"{tmp_path / 'bad.jsonl'}, line 2: expected a JSON object, got list" in msg


def test_bad_input_missing_target(tmp_path: Path):
    msg = error_of(write_jsonl(tmp_path / "bad.jsonl", [{"p": "a", "y": 1}, {"p": "b"}]))
    assert "bad.jsonl, line 2: missing target field 'y'" in msg


def test_bad_input_unknown_target_lists_fields(tmp_path: Path):
    msg = error_of(write_jsonl(tmp_path / "bad.jsonl", grm_rows(2)), target="reward")
    assert "bad.jsonl, line 1: data.target='reward'" in msg and "fields: prompt, response, score" in msg


def test_bad_input_missing_field_of_the_first_row(tmp_path: Path):
    rows = grm_rows(3)
    del rows[2]["response"]
    msg = error_of(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert "bad.jsonl, line 3: missing field(s) 'response' (the first row, line 1, has them)" in msg


def test_bad_input_field_the_first_row_lacks(tmp_path: Path):
    rows = grm_rows(3)
    rows[1]["note"] = "extra"
    msg = error_of(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert "bad.jsonl, line 2: field(s) 'note' not in the first row" in msg


@pytest.mark.parametrize("value", ["7.5", True, [1], {"v": 1}])
def test_bad_input_target_not_a_number(tmp_path: Path, value):
    rows = grm_rows(3)
    rows[1]["score"] = value
    msg = error_of(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert f"bad.jsonl, line 2, target 'score': {value!r} is not a number" in msg


@pytest.mark.parametrize("raw", ["null", "NaN", "Infinity"])
def test_bad_input_missing_target_says_drop_skips_it(tmp_path: Path, raw: str):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"p": "a", "y": 1}\n{"p": "b", "y": %s}\n{"p": "c", "y": 3}\n' % raw)
    msg = error_of(path)
    assert "bad.jsonl, line 2: missing or non-finite target 'y' (1 such lines)" in msg
    assert "data.missing=drop" in msg
    assert load(path, missing="drop", val_fraction=0.0, test_fraction=0.0).n_rows == 2


def test_bad_input_null_text_field(tmp_path: Path):
    rows = grm_rows(4)
    rows[2]["prompt"] = None
    msg = error_of(write_jsonl(tmp_path / "bad.jsonl", rows), missing="mean")
    assert "bad.jsonl, line 3: missing value (null) in field 'prompt'" in msg and "data.missing=drop" in msg


@pytest.mark.parametrize("value,kind", [(["a", "b"], "list"), ({"role": "user"}, "object")])
def test_bad_input_nested_field(tmp_path: Path, value, kind: str):
    rows = grm_rows(3)
    rows[1]["response"] = value
    msg = error_of(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert f"bad.jsonl, line 2, field 'response': holds a JSON {kind}" in msg


def test_bad_input_empty_file(tmp_path: Path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    assert "empty.jsonl: file is empty" in error_of(tmp_path / "empty.jsonl")
    assert "blank.jsonl: file is empty" in error_of(tmp_path / "blank.jsonl")


def test_bad_input_only_a_target(tmp_path: Path):
    msg = error_of(write_jsonl(tmp_path / "bad.jsonl", [{"score": 1}, {"score": 2}]))
    assert "bad.jsonl, line 1: only the target field 'score'" in msg


def test_bad_input_missing_file_names_the_path(tmp_path: Path):
    msg = error_of(tmp_path / "nowhere" / "x.jsonl")
    assert f"{tmp_path / 'nowhere' / 'x.jsonl'}: file not found" in msg


def test_bad_input_not_utf8(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"p": "\xff", "y": 1}\n')
    assert "bad.jsonl: not UTF-8 text" in error_of(path)


def test_bad_input_all_rows_dropped(tmp_path: Path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"p": "a", "y": None}, {"p": "b", "y": None}])
    assert "bad.jsonl: no usable rows" in error_of(path, missing="drop")


# --- the predict side: a checkpoint trained on jsonl takes its fields as input columns ----------

@pytest.fixture(scope="module")
def grm_task(tmp_path_factory):
    """A tiny model built on a jsonl source with a template (prepare_task, CPU, no Ray)."""
    from rlreg.config import load_config
    from rlreg.train.task import prepare_task

    root = tmp_path_factory.mktemp("grm")
    rows = grm_rows(30)
    rows[4]["response"] = 6.0001  # a number: written with data.float_format, in training and predict
    data = write_jsonl(root / "grm.jsonl", rows)
    overrides = [o for o in TINY if not o.startswith(("data.source", "data.max_rows"))]
    cfg = load_config(None, [*overrides, f"data.source=jsonl:{data}", f"run_dir={root / 'run'}"])
    cfg.data.prompt_template = GRM_TEMPLATE
    return prepare_task(cfg, root / "run")


def test_checkpoint_expects_the_text_fields(grm_task):
    from rlreg.model.checkpoint import load_checkpoint

    info = json.loads((grm_task.model_dir / "task.json").read_text())
    assert info["text_fields"] == ["prompt", "response"] and info["kind"] == "text"
    assert load_checkpoint(grm_task.model_dir).input_columns == ["prompt", "response"]


def test_one_text_checkpoints_still_expect_text():
    from rlreg.model.checkpoint import Checkpoint

    old = Checkpoint(model_dir=Path("."), meta=None, info={"kind": "text"}, scaler=None,  # type: ignore[arg-type]
                     number_tokenizer=None, codec=None)  # type: ignore[arg-type]
    assert old.input_columns == ["text"]


def test_new_rows_render_to_the_training_prompts(grm_task, tmp_path: Path):
    from rlreg.model.checkpoint import load_checkpoint
    from rlreg.train.task import PREDICT, task_for_rows

    ds = grm_task.dataset
    test = ds.splits.test
    # the test rows again, as a caller would send them: no score, an id passed through
    new = [{"id": f"r{i}", "prompt": ds.text_fields["prompt"][i], "response": ds.text_fields["response"][i]}
           for i in test]
    task = task_for_rows(load_checkpoint(grm_task.model_dir), read_rows(write_jsonl(tmp_path / "in.jsonl", new)))
    assert len(test) > 0 and task.prompts[PREDICT] == grm_task.prompts["test"]
    rendered = render_prompts(task.dataset, [0], task.checkpoint.data_cfg)[0]
    assert rendered == f"{new[0]['prompt']}\n{new[0]['response']}\nScore:"  # the template from task.json


def test_numbers_in_new_rows_are_written_as_training_wrote_them(grm_task, tmp_path: Path):
    from rlreg.model.checkpoint import load_checkpoint
    from rlreg.train.task import task_for_rows

    ds = grm_task.dataset
    trained = ds.text_fields["response"][int(np.flatnonzero(ds.row_ids == 4)[0])]
    rows = read_rows(write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Q", "response": 6.0001}]))
    task = task_for_rows(load_checkpoint(grm_task.model_dir), rows)
    assert trained == "6" and task.dataset.text_fields["response"] == [trained]


def test_new_rows_missing_a_field_name_it(grm_task, tmp_path: Path):
    from rlreg.model.checkpoint import load_checkpoint
    from rlreg.train.task import task_for_rows

    path = tmp_path / "in.csv"
    path.write_text("prompt,answer\nQ,A\n")
    with pytest.raises(DataError) as err:
        task_for_rows(load_checkpoint(grm_task.model_dir), read_rows(path))
    msg = str(err.value)
    assert f"{path}: missing input column(s) 'response'" in msg and "expects: prompt, response" in msg


def test_new_rows_with_a_null_or_nested_field_name_row_and_column(grm_task, tmp_path: Path):
    from rlreg.model.checkpoint import load_checkpoint
    from rlreg.train.task import task_for_rows

    checkpoint = load_checkpoint(grm_task.model_dir)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Q", "response": "A"}, {"prompt": "Q", "response": None}])
    with pytest.raises(DataError, match=r"in\.jsonl, line 2, column 'response': missing value"):
        task_for_rows(checkpoint, read_rows(path))
    path = write_jsonl(tmp_path / "in2.jsonl", [{"prompt": ["Q"], "response": "A"}])
    with pytest.raises(DataError, match=r"in2\.jsonl, line 1, column 'prompt': holds a JSON list"):
        task_for_rows(checkpoint, read_rows(path))


def test_csv_rows_keep_empty_strings_as_text(grm_task, tmp_path: Path):
    from rlreg.model.checkpoint import load_checkpoint
    from rlreg.train.task import task_for_rows

    path = tmp_path / "in.csv"
    path.write_text('prompt,response\n"Q, with comma",\n')  # an empty response is still a response
    task = task_for_rows(load_checkpoint(grm_task.model_dir), read_rows(path))
    assert task.dataset.text_fields == {"prompt": ["Q, with comma"], "response": [""]}


def test_reward_columns_are_the_text_fields(grm_task):
    assert grm_task.column_names == ["prompt", "response"]
    columns = grm_task.columns("train", [0, 1])
    ds = grm_task.dataset
    first_two = ds.splits.train[:2]
    assert set(columns) == {"prompt", "response"} and columns["prompt"].dtype == object
    assert columns["prompt"].tolist() == [ds.text_fields["prompt"][i] for i in first_two]
    assert columns["response"].tolist() == [ds.text_fields["response"][i] for i in first_two]

"""`rlreg predict`: rows from CSV / JSONL are rendered exactly as training rendered them, sampled
through a real rollout actor, and written with passthrough columns and ordered intervals; bad
input is refused naming the column (and row) before any engine starts. The checkpoint is the
session's tiny (untrained) model directory: predict's mechanics do not need a trained model."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from rlreg.errors import ConfigError, DataError
from rlreg.commands.predict import PREDICTION_COLUMNS, run_predict
from rlreg.data.rows import read_rows
from rlreg.model.checkpoint import load_checkpoint
from rlreg.train.task import task_for_rows

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def rollout(tiny_task, tiny_cfg, ray_session):
    from rlreg.actors.rollout import RolloutGroup

    group = RolloutGroup(tiny_task.model_dir, tiny_cfg.engine, tiny_cfg.model.max_positions, tiny_cfg.ray)
    yield group
    group.shutdown()


def _test_rows(task, n: int) -> tuple[list[str], list[dict]]:
    """The first n test rows as {column: value}, plus an id and a free-text passthrough column."""
    ds = task.dataset
    X = ds.features[ds.splits.test[:n]]
    rows = [{"id": f"r{i:03d}", **dict(zip(ds.source_columns, map(float, x))), "note": f"a, b {i}"}
            for i, x in enumerate(X)]
    return ["id", *ds.source_columns, "note"], rows


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_new_rows_render_to_the_training_prompts(tiny_task, tmp_path):
    columns, rows = _test_rows(tiny_task, 8)
    checkpoint = load_checkpoint(tiny_task.model_dir)
    task = task_for_rows(checkpoint, read_rows(_write_csv(tmp_path / "in.csv", columns, rows)))
    assert task.prompts["predict"] == tiny_task.prompts["test"][:8]
    # The scaler comes from task.json, and it is the one training fitted.
    assert checkpoint.scaler.state_dict() == tiny_task.scaler.state_dict()


def test_predict_csv_passthrough_and_interval_order(tiny_task, rollout, tmp_path):
    columns, rows = _test_rows(tiny_task, 6)
    out = tmp_path / "out" / "pred.csv"  # the folder is created
    summary = run_predict(tiny_task.model_dir, _write_csv(tmp_path / "in.csv", columns, rows), out, samples=8,
                          alpha=0.2, aggregation="median", rollout=rollout)
    assert summary["rows"] == 6 and summary["aggregation_from"] == "given"
    with out.open(newline="") as stream:
        reader = csv.DictReader(stream)
        written = list(reader)
    assert reader.fieldnames == ["id", "note", *PREDICTION_COLUMNS]
    assert [r["id"] for r in written] == [r["id"] for r in rows]  # order kept, "r000" not turned into 0
    assert [r["note"] for r in written] == [r["note"] for r in rows]
    pred, lo, hi = (np.array([float(r[c]) for r in written]) for c in ("prediction", "lower", "upper"))
    assert np.all(lo <= pred) and np.all(pred <= hi) and np.all(lo < hi)
    assert all(r["samples_valid"] == "8" for r in written)
    # Decoded values lie in the range the scaler maps onto the number tokens: the train targets'.
    y_train = tiny_task.y["train"]
    assert np.all(lo >= y_train.min() - 1e-6) and np.all(hi <= y_train.max() + 1e-6)
    assert not list(out.parent.glob(".*.tmp"))


def test_predict_jsonl_keeps_json_types(tiny_task, rollout, tmp_path):
    _, rows = _test_rows(tiny_task, 4)
    for i, row in enumerate(rows):
        row["id"], row["meta"] = i, {"batch": [i, "x"]}
    rows[0]["bmi"] = f" {rows[0]['bmi']} "  # numbers written as text are read as numbers
    out = tmp_path / "pred.jsonl"
    summary = run_predict(tiny_task.model_dir, _write_jsonl(tmp_path / "in.jsonl", rows), out, samples=4,
                          rollout=rollout)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [list(r) for r in written] == [["id", "note", "meta", *PREDICTION_COLUMNS]] * 4
    assert [r["id"] for r in written] == [0, 1, 2, 3] and written[2]["meta"] == {"batch": [2, "x"]}
    assert all(r["lower"] <= r["upper"] and r["samples_valid"] == 4 for r in written)
    assert summary["aggregation"] in ("mean", "median", "trimmed_mean")


def test_missing_feature_column_is_named(tiny_task, tmp_path):
    columns, rows = _test_rows(tiny_task, 3)
    columns.remove("bmi")
    for row in rows:
        del row["bmi"]
    with pytest.raises(DataError, match=r"missing input column\(s\) 'bmi'.*expects: age, sex, bmi, bp"):
        run_predict(tiny_task.model_dir, _write_csv(tmp_path / "in.csv", columns, rows), tmp_path / "o.csv")


def test_bad_value_names_line_and_column(tiny_task, tmp_path):
    columns, rows = _test_rows(tiny_task, 4)
    rows[2]["s1"] = "abc"  # third data row: line 4 of the CSV (the header is line 1)
    with pytest.raises(DataError, match=r"in\.csv, line 4, column 's1': 'abc' is not a number"):
        run_predict(tiny_task.model_dir, _write_csv(tmp_path / "in.csv", columns, rows), tmp_path / "o.csv")
    rows[2]["s1"], rows[1]["age"] = 1.0, None  # JSON null: a missing value, and the model needs every feature
    with pytest.raises(DataError, match=r"in\.jsonl, line 2, column 'age': missing value"):
        run_predict(tiny_task.model_dir, _write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "o.jsonl")


def test_failed_predict_leaves_existing_output_alone(tiny_task, tmp_path):
    columns, rows = _test_rows(tiny_task, 2)
    rows[0]["prediction"] = 1.0  # a passthrough column the output would overwrite
    out = tmp_path / "o.csv"
    out.write_text("old\n")
    with pytest.raises(DataError, match="'prediction' would be overwritten"):
        run_predict(tiny_task.model_dir, _write_csv(tmp_path / "in.csv", [*columns, "prediction"], rows), out)
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_not_a_checkpoint_and_bad_file_types(tiny_task, tmp_path):
    with pytest.raises(ConfigError, match="no rlreg_meta.json"):
        load_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="unknown file type '.xlsx'"):
        read_rows(tmp_path / "in.xlsx")


def test_vector_input_checkpoint(tiny_cfg, ray_session, tmp_path):
    """data.input=vector: new rows become the same standardised feature vectors as in training
    (train statistics stored with the encoder), and sampling goes through the encoder."""
    import copy

    from rlreg.train.task import prepare_task

    cfg = copy.deepcopy(tiny_cfg)
    cfg.data.input, cfg.model.soft_tokens, cfg.model.encoder_hidden = "vector", 2, 32
    task = prepare_task(cfg, tmp_path)
    columns, rows = _test_rows(task, 5)
    source = _write_csv(tmp_path / "in.csv", columns, rows)
    seen = task_for_rows(load_checkpoint(task.model_dir), read_rows(source))
    np.testing.assert_array_equal(seen.features["predict"], task.features["test"][:5])
    assert seen.prompts["predict"] == task.prompts["test"][:5]
    out = tmp_path / "o.csv"
    run_predict(task.model_dir, source, out, samples=3, overrides=["engine.kv_cache_memory_bytes=67108864"])
    with out.open(newline="") as stream:
        written = list(csv.DictReader(stream))
    assert [r["id"] for r in written] == [r["id"] for r in rows] and {r["samples_valid"] for r in written} == {"3"}


def test_text_source_checkpoint_reads_a_text_column(tiny_cfg, tmp_path):
    """A text-source checkpoint (SQL queries → cardinality) takes a `text` column."""
    import copy

    from rlreg.data.config import resolve_data_dir
    from rlreg.errors import RlregError
    from rlreg.train.task import prepare_task

    try:
        resolve_data_dir(None)
    except RlregError:
        pytest.skip("the shared data folder (sqlcard) is not on this machine")
    cfg = copy.deepcopy(tiny_cfg)
    cfg.data.source, cfg.data.max_rows, cfg.numbers.scaler, cfg.model.max_positions = (
        "sqlcard:job-light", None, "signed_log", 512)
    task = prepare_task(cfg, tmp_path)
    texts = [task.dataset.texts[i] for i in task.dataset.splits.test[:4]]
    source = _write_jsonl(tmp_path / "q.jsonl", [{"qid": i, "text": t} for i, t in enumerate(texts)])
    checkpoint = load_checkpoint(task.model_dir)
    assert task_for_rows(checkpoint, read_rows(source)).prompts["predict"] == task.prompts["test"][:4]
    wrong = _write_jsonl(tmp_path / "bad.jsonl", [{"qid": 0, "query": texts[0]}])
    with pytest.raises(DataError, match=r"missing input column\(s\) 'text'; the checkpoint expects: text"):
        run_predict(task.model_dir, wrong, tmp_path / "o.jsonl")


def test_cli_predict(tiny_task, ray_session, tmp_path, capsys):
    from rlreg.cli import main

    columns, rows = _test_rows(tiny_task, 3)
    source = _write_csv(tmp_path / "in.csv", columns, rows)
    out = tmp_path / "o.jsonl"
    argv = ["predict", str(tiny_task.model_dir), "--input", str(source), "--output", str(out), "--samples", "2"]
    assert main([*argv, "engine.kv_cache_memory_bytes=67108864"]) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["r000", "r001", "r002"]
    assert "wrote 3 rows" in capsys.readouterr().out
    # Settings that belong to the checkpoint cannot be overridden at prediction time.
    assert main([*argv, "data.float_format={:.2f}"]) == 2
    assert "only engine., ray., eval.chunk_inputs" in capsys.readouterr().err

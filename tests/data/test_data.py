"""rlreg.data: every source loads, splits are sound and seeded, rendering is deterministic."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlreg.data import (DataConfig, Dataset, feature_matrix, fit_feature_stats, load_dataset,
                        prompt_corpus, render_prompts, resolve_data_dir, show_dataset)
from rlreg.data.splits import carve_val, plan_rows, split_indices, subsample_within
from rlreg.data.uci import read_index_file
from rlreg.errors import ConfigError
from conftest import REPO


@pytest.fixture(scope="module")
def data_dir() -> Path:
    return resolve_data_dir()


def load(source: str, **kw) -> Dataset:
    return load_dataset(DataConfig(source=source, **kw))


def assert_partition(ds: Dataset) -> None:
    parts = [ds.splits.train, ds.splits.val, ds.splits.test]
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == ds.n_rows  # disjoint and covering
    assert set(joined.tolist()) == set(range(ds.n_rows))


# --- sources -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,rows,n_features", [("concrete", 1030, 8), ("yacht", 308, 6),
                                                  ("energy", 768, 8)])
def test_uci_loads_with_official_split(data_dir: Path, name: str, rows: int, n_features: int):
    ds = load(f"uci:{name}")
    assert ds.kind == "tabular" and ds.n_rows == rows
    assert ds.features.shape == (rows, n_features) and ds.features.dtype == np.float64
    assert ds.splits.official
    assert_partition(ds)
    folder = data_dir / "uci" / name
    official_test = read_index_file(folder / "index_test_0.txt")
    official_train = read_index_file(folder / "index_train_0.txt")
    np.testing.assert_array_equal(ds.row_ids[ds.splits.test], official_test)
    train_val = ds.row_ids[np.concatenate([ds.splits.train, ds.splits.val])]
    assert sorted(train_val.tolist()) == sorted(official_train.tolist())
    # the target column of data.txt, untouched
    raw = np.loadtxt(folder / "data.txt")
    np.testing.assert_allclose(ds.y, raw[:, -1])
    X_test, y_test = ds.subset("test")
    assert X_test.shape == (len(official_test), n_features)
    np.testing.assert_allclose(y_test, raw[official_test, -1])
    summary = ds.summary()
    assert summary["rows"] == rows and summary["official_splits"] and summary["kind"] == "tabular"


def test_uci_other_split_and_subsample(data_dir: Path):
    folder = data_dir / "uci" / "concrete"
    ds = load("uci:concrete", split=3)
    np.testing.assert_array_equal(ds.row_ids[ds.splits.test],
                                  read_index_file(folder / "index_test_3.txt"))
    small = load("uci:concrete", split=3, max_rows=200)
    assert small.n_rows == 200 and small.splits.official
    assert_partition(small)
    official_test = set(read_index_file(folder / "index_test_3.txt").tolist())
    assert set(small.row_ids[small.splits.test].tolist()) <= official_test
    assert abs(len(small.splits.test) - 20) <= 1  # proportional: ~10% test in concrete


@pytest.mark.parametrize("file,rows,target,first_feature", [
    ("abalone.csv", 4177, "Class_number_of_rings", "Sex=F"),
    ("airfoil.csv", 1503, "out", "in1"),  # BOM must not leak into the first name
    ("cal_house_processed.csv", 20640, "MedHouseVal", "MedInc"),
    ("elevators.csv", 16599, "Goal", "climbRate"),  # ", " separators
])
def test_tabular_files_load(data_dir: Path, file: str, rows: int, target: str, first_feature: str):
    ds = load(f"csv:{data_dir / 'tabular' / file}")
    assert ds.n_rows == rows and ds.target_name == target
    assert ds.feature_names[0] == first_feature
    assert np.isfinite(ds.features).all() and np.isfinite(ds.y).all()
    assert not ds.splits.official
    assert_partition(ds)


def test_tabular_short_names_and_categorical_encodings():
    onehot = load("csv:abalone")  # found inside <data>/tabular with .csv added
    assert onehot.categorical == {"Sex": ["F", "I", "M"]}
    assert onehot.features[:, :3].sum(axis=1).tolist() == [1.0] * onehot.n_rows
    ordinal = load("file:tabular/abalone.csv", categorical="ordinal")
    assert ordinal.feature_names[0] == "Sex" and len(ordinal.feature_names) == 8
    assert set(np.unique(ordinal.features[:, 0]).tolist()) == {0.0, 1.0, 2.0}
    # both encodings render the same prompt
    idx = [0, 1, 2]
    assert render_prompts(onehot, idx) == render_prompts(ordinal, idx)
    assert render_prompts(onehot, [0])[0].startswith("Sex=M Length=0.455")


def test_target_by_name_and_index(data_dir: Path):
    path = data_dir / "tabular" / "airfoil.csv"
    assert load(f"csv:{path}", target="-1").target_name == "out"
    by_index = load(f"csv:{path}", target="0")
    assert by_index.target_name == "in1" and "out" in by_index.feature_names
    assert load(f"csv:{path}", target="in3").target_name == "in3"


def test_quirky_csv_tsv_and_parquet(tmp_path: Path):
    # BOM, quoted header, CRLF, blank line after the header, spaces after commas
    text = '\ufeff"a","b","y"\r\n\r\n1, 2, 3\r\n4, 5, 6\r\n7, 8, 9\r\n10, 11, 12\r\n'
    csv = tmp_path / "q.csv"
    csv.write_bytes(text.encode("utf-8"))
    ds = load(f"csv:{csv}", val_fraction=0.0, test_fraction=0.25)
    assert ds.feature_names == ["a", "b"] and sorted(ds.y.tolist()) == [3, 6, 9, 12]
    frame = pd.DataFrame({"a": [1.0, 2, 3, 4], "c": ["x", "y", "x", "y"], "y": [1.0, 2, 3, 4]})
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    for name in ("t.tsv", "t.parquet"):
        got = load(f"file:{tmp_path / name}", val_fraction=0.0, test_fraction=0.25)
        assert got.feature_names == ["a", "c=x", "c=y"] and got.n_rows == 4


def test_missing_feature_policies(tmp_path: Path):
    csv = tmp_path / "m.csv"
    csv.write_text("a,b,y\n1,,1\n2,20,2\n3,30,3\n4,40,4\n5,50,5\n6,60,6\n7,70,7\n8,80,8\n")
    dropped = load(f"csv:{csv}", missing="drop", val_fraction=0.0)
    assert dropped.n_rows == 7 and any("dropped 1 rows" in n for n in dropped.notes)
    filled = load(f"csv:{csv}", missing="mean", val_fraction=0.0, test_fraction=0.25)
    row = int(np.flatnonzero(filled.row_ids == 0)[0])
    train = [i for i in filled.splits.train if i != row]
    assert filled.features[row, 1] == pytest.approx(filled.features[train, 1].mean())
    nan_target = tmp_path / "n.csv"
    nan_target.write_text("a,y\n1,1\n2,\n3,3\n4,inf\n5,5\n")
    ds = load(f"csv:{nan_target}", missing="drop", val_fraction=0.0, test_fraction=0.2)
    assert ds.n_rows == 3 and any("dropped 2 rows" in n for n in ds.notes)


def test_missing_categorical_mode_and_drops_follow_official_split(tmp_path: Path):
    csv = tmp_path / "c.csv"
    csv.write_text("s,a,y\nA,1,1\n,2,2\nB,3,3\nA,4,4\nA,5,5\n")
    ds = load(f"csv:{csv}", missing="mean", val_fraction=0.0)
    assert render_prompts(ds, [1]) == ["s=A a=2"]  # filled with the train mode
    folder = tmp_path / "uci" / "t"
    folder.mkdir(parents=True)
    (folder / "data.txt").write_text("".join(f"{i} {'nan' if i == 2 else i} {i}\n"
                                             for i in range(10)))
    (folder / "index_features.txt").write_text("0\n1\n")
    (folder / "index_target.txt").write_text("2\n")
    (folder / "n_splits.txt").write_text("1\n")
    (folder / "index_train_0.txt").write_text("".join(f"{i}\n" for i in range(8)))
    (folder / "index_test_0.txt").write_text("8\n9\n")
    ds = load("uci:t", data_dir=str(tmp_path), missing="drop", val_fraction=0.0)
    assert ds.row_ids[ds.splits.train].tolist() == [0, 1, 3, 4, 5, 6, 7]
    assert ds.row_ids[ds.splits.test].tolist() == [8, 9]


def test_sqlcard_loads(data_dir: Path):
    for name, rows in (("synthetic", 5000), ("job-light", 70), ("scale", 500)):
        ds = load(f"sqlcard:{name}")
        assert ds.kind == "text" and ds.n_rows == rows and ds.features is None
        assert all(t.startswith("SELECT COUNT(*) FROM") for t in ds.texts)
        assert (ds.y >= 1).all()
        assert_partition(ds)
    # line k of the .sql pairs with line k of the .csv (last '#' field)
    ds = load("sqlcard:job-light", val_fraction=0.0, test_fraction=0.0)
    first_csv = (data_dir / "sqlcard" / "job-light.csv").read_text().splitlines()[0]
    first_sql = (data_dir / "sqlcard" / "job-light.sql").read_text().splitlines()[0]
    assert ds.texts[0] == first_sql and ds.y[0] == float(first_csv.split("#")[-1])


def test_builtins_need_no_data_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("RLREG_DATA", str(tmp_path / "does-not-exist"))
    diabetes = load("sklearn:diabetes")
    assert diabetes.n_rows == 442 and diabetes.feature_names[:3] == ["age", "sex", "bmi"]
    assert_partition(diabetes)
    friedman = load("sklearn:friedman1")
    assert friedman.n_rows == 1000 and friedman.features.shape == (1000, 10)
    assert load("sklearn:friedman1", max_rows=200).n_rows == 200
    assert load("sklearn:diabetes", max_rows=100).n_rows == 100


# --- splits --------------------------------------------------------------------------------

def test_seeded_splits_reproducible_and_seed_dependent():
    a, b = load("sklearn:diabetes", seed=1), load("sklearn:diabetes", seed=1)
    c = load("sklearn:diabetes", seed=2)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a.splits[name], b.splits[name])
    assert not np.array_equal(a.splits.test, c.splits.test)
    assert a.splits.sizes() == {"train": 319, "val": 35, "test": 88}


def test_official_val_depends_on_seed_only():
    a, b = load("uci:yacht", seed=0), load("uci:yacht", seed=5)
    np.testing.assert_array_equal(a.row_ids[a.splits.test], b.row_ids[b.splits.test])
    assert not np.array_equal(a.row_ids[a.splits.val], b.row_ids[b.splits.val])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 400), val=st.floats(0, 0.49), test=st.floats(0, 0.5),
       seed=st.integers(0, 2**31), max_rows=st.one_of(st.none(), st.integers(2, 400)))
def test_plan_rows_partitions(n: int, val: float, test: float, seed: int, max_rows: int | None):
    rows, splits = plan_rows(n, val_fraction=val, test_fraction=test, seed=seed, max_rows=max_rows)
    splits.check(len(rows), "plan")
    assert sum(splits.sizes().values()) == len(rows) == min(n, max_rows or n)
    assert len(splits.train) >= 1


def test_split_helpers():
    s = split_indices(100, 0.1, 0.2, seed=0)
    assert s.sizes() == {"train": 72, "val": 8, "test": 20}
    train, val = carve_val(np.arange(50, 100), 0.2, seed=0)
    assert len(val) == 10 and set(train) | set(val) == set(range(50, 100))
    tr, te = subsample_within([np.arange(90), np.arange(90, 100)], 50, seed=0)
    assert (len(tr), len(te)) == (45, 5) and set(te) <= set(range(90, 100))


def test_index_files_may_hold_floats(tmp_path: Path):
    path = tmp_path / "index_train_0.txt"
    path.write_text("1.0\n3.0\n 0 \n")
    assert read_index_file(path, 5).tolist() == [1, 3, 0]


# --- rendering -----------------------------------------------------------------------------

def test_render_is_deterministic_and_uses_float_format():
    ds = load("sklearn:diabetes")
    idx = ds.splits.test[:5]
    first = render_prompts(ds, idx)
    assert first == render_prompts(load("sklearn:diabetes"), idx)
    assert first[0].split()[0].startswith("age=")
    two_dp = render_prompts(ds, [0], DataConfig(float_format="{:.2f}"))[0]
    assert two_dp.startswith("age=59.00 sex=2.00 bmi=32.10")
    templ = DataConfig(prompt_template="Patient aged {age:.0f}, bmi {bmi}. {features}")
    out = render_prompts(ds, [0], templ)[0]
    assert out.startswith("Patient aged 59, bmi 32.1. age=59 sex=2")


def test_render_text_sources_normalise_whitespace():
    ds = load("sqlcard:job-light")
    ds.texts[0] = "  SELECT   COUNT(*)\n\tFROM t ; "
    assert render_prompts(ds, [0]) == ["SELECT COUNT(*) FROM t ;"]
    assert render_prompts(ds, [0], DataConfig(prompt_template="Q: {text}")) == \
        ["Q: SELECT COUNT(*) FROM t ;"]


def test_prompt_corpus_is_train_prompts():
    ds = load("uci:yacht")
    corpus = prompt_corpus(ds)
    assert corpus == render_prompts(ds, ds.splits.train) and len(corpus) == len(ds.splits.train)


def test_feature_stats_come_from_train_only():
    ds = load("uci:energy")
    stats = fit_feature_stats(ds)
    train = ds.features[ds.splits.train]
    np.testing.assert_allclose(stats.mean, train.mean(axis=0))
    ds.features[ds.splits.test] += 1e6  # test rows must not move the stats
    np.testing.assert_allclose(fit_feature_stats(ds).mean, stats.mean)
    X = feature_matrix(ds, ds.splits.train, stats)
    assert X.dtype == np.float32
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-4)


def test_constant_feature_gets_unit_std(tmp_path: Path):
    csv = tmp_path / "c.csv"
    csv.write_text("k,a,y\n" + "".join(f"7,{i},{i}\n" for i in range(20)))
    ds = load(f"csv:{csv}")
    stats = fit_feature_stats(ds)
    assert stats.std[0] == 1.0
    assert (feature_matrix(ds, np.arange(20), stats)[:, 0] == 0).all()


# --- show, config, isolation ---------------------------------------------------------------

def test_show_dataset_reports_rows_and_splits():
    text = show_dataset(DataConfig(source="uci:concrete"))
    assert "1030 rows" in text and "official split 0" in text and "strength" in text
    assert "train 834, val 93, test 103" in text


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match=r"data\.val_fraction must be in \[0, 0\.5\), got 0\.9"):
        DataConfig(val_fraction=0.9).validate()
    with pytest.raises(ConfigError, match="data.missing"):
        DataConfig(missing="zero").validate()
    with pytest.raises(ConfigError, match="data.float_format"):
        DataConfig(float_format="plain").validate()
    DataConfig().validate()


def test_data_package_imports_no_torch():
    code = "import sys, rlreg.data; assert 'torch' not in sys.modules and 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)

"""Broken inputs: each must fail with DataError/ConfigError naming the file, column or row."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rlreg.data.config as data_config
from rlreg.data import DataConfig, feature_matrix, fit_feature_stats, load_dataset, render_prompts
from rlreg.data import resolve_data_dir
from rlreg.errors import ConfigError, DataError


def load(source: str, **kw):
    return load_dataset(DataConfig(source=source, **kw))


def csv_error(path: Path) -> str:
    """The message of the DataError that loading csv:PATH raises."""
    with pytest.raises(DataError) as err:
        load(f"csv:{path}")
    return str(err.value)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def uci_folder(root: Path, n_rows: int = 6, n_splits: int = 2, train: str = "0\n1\n2\n3\n",
               test: str = "4\n5\n") -> Path:
    folder = root / "uci" / "tiny"
    folder.mkdir(parents=True)
    write(folder / "data.txt", "".join(f"{i} {i * 2} {i * 3}\n" for i in range(n_rows)))
    write(folder / "index_features.txt", "0\n1\n")
    write(folder / "index_target.txt", "2\n")
    write(folder / "n_splits.txt", f"{n_splits}\n")
    for k in range(n_splits):
        write(folder / f"index_train_{k}.txt", train)
        write(folder / f"index_test_{k}.txt", test)
    return folder


# --- CSV -----------------------------------------------------------------------------------

def test_bad_input_missing_target_column(tmp_path: Path):
    path = write(tmp_path / "t.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(DataError) as err:
        load(f"csv:{path}", target="price")
    msg = str(err.value)
    assert str(path) in msg and "'price'" in msg and "a, b, c" in msg


def test_bad_input_target_index_out_of_range(tmp_path: Path):
    path = write(tmp_path / "t.csv", "a,b\n1,2\n")
    with pytest.raises(DataError, match="target index 5 out of range"):
        load(f"csv:{path}", target="5")


def test_bad_input_non_numeric_target_names_line(tmp_path: Path):
    # header on line 1, a blank line 2, so the third data row sits on line 5
    path = write(tmp_path / "t.csv", "x,y\n\n1,10\n2,20\n3,abc\n4,40\n")
    msg = csv_error(path)
    assert str(path) in msg and "'y'" in msg and "line 5" in msg and "'abc'" in msg


@pytest.mark.parametrize("value,word", [("", "missing"), ("nan", "missing"), ("inf", "infinite"),
                                        ("-inf", "infinite")])
def test_bad_input_nan_and_inf_targets(tmp_path: Path, value: str, word: str):
    path = write(tmp_path / "t.csv", f"x,y\n1,10\n2,{value}\n3,30\n")
    msg = csv_error(path)
    assert str(path) in msg and "line 3" in msg and word in msg and "data.missing=drop" in msg


def test_bad_input_empty_file(tmp_path: Path):
    path = write(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match="empty") as err:
        load(f"csv:{path}")
    assert str(path) in str(err.value)


def test_bad_input_header_only_file(tmp_path: Path):
    path = write(tmp_path / "header.csv", "a,b,y\n")
    with pytest.raises(DataError, match="no data rows") as err:
        load(f"csv:{path}")
    assert str(path) in str(err.value)


def test_bad_input_missing_feature_under_error_policy(tmp_path: Path):
    path = write(tmp_path / "t.csv", "a,b,y\n1,2,3\n4,,6\n")
    msg = csv_error(path)
    assert str(path) in msg and "'b'" in msg and "line 3" in msg and "data.missing" in msg


def test_bad_input_ragged_csv(tmp_path: Path):
    path = write(tmp_path / "t.csv", "a,y\n1,2\n3,4,5,6\n")
    with pytest.raises(DataError) as err:
        load(f"csv:{path}")
    assert str(path) in str(err.value) and "line 3" in str(err.value)


def test_bad_input_file_not_found(tmp_path: Path):
    with pytest.raises(DataError, match="not found") as err:
        load(f"csv:{tmp_path / 'nope.csv'}")
    assert "nope.csv" in str(err.value)


# --- UCI folders ---------------------------------------------------------------------------

def test_bad_input_uci_split_indices_out_of_range(tmp_path: Path):
    uci_folder(tmp_path, train="0\n1\n9\n")
    with pytest.raises(DataError) as err:
        load("uci:tiny", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "index_train_0.txt" in msg and "line 3" in msg and "9" in msg and "[0, 6)" in msg


def test_bad_input_uci_split_beyond_n_splits(tmp_path: Path):
    uci_folder(tmp_path, n_splits=2)
    with pytest.raises(DataError) as err:
        load("uci:tiny", data_dir=str(tmp_path), split=2)
    msg = str(err.value)
    assert "n_splits.txt" in msg and "data.split=2" in msg and "2 splits" in msg


def test_bad_input_uci_overlapping_split(tmp_path: Path):
    uci_folder(tmp_path, train="0\n1\n2\n3\n4\n")
    with pytest.raises(DataError, match="share 1 rows") as err:
        load("uci:tiny", data_dir=str(tmp_path))
    assert "index_test_0.txt" in str(err.value)


def test_bad_input_uci_non_numeric_data(tmp_path: Path):
    folder = uci_folder(tmp_path)
    write(folder / "data.txt", "1 2 3\n4 x 6\n")
    with pytest.raises(DataError) as err:
        load("uci:tiny", data_dir=str(tmp_path))
    assert "data.txt" in str(err.value)


def test_bad_input_uci_unknown_name_lists_known(tmp_path: Path):
    uci_folder(tmp_path)
    with pytest.raises(DataError, match="available: tiny"):
        load("uci:huge", data_dir=str(tmp_path))


def test_good_uci_folder_loads(tmp_path: Path):
    uci_folder(tmp_path)  # the fixture itself is valid
    ds = load("uci:tiny", data_dir=str(tmp_path), val_fraction=0.25)
    assert ds.n_rows == 6 and ds.feature_names == ["x0", "x1"] and ds.splits.official
    assert ds.row_ids[ds.splits.test].tolist() == [4, 5]


# --- SQL cardinality files -----------------------------------------------------------------

def sql_pair(tmp_path: Path, sql: str, csv: str) -> Path:
    write(tmp_path / "w.sql", sql)
    write(tmp_path / "w.csv", csv)
    return tmp_path / "w"


def test_bad_input_sqlcard_line_count_mismatch(tmp_path: Path):
    base = sql_pair(tmp_path, "SELECT COUNT(*) FROM t a;\n" * 2, "t a##x#5\n")
    with pytest.raises(DataError, match="2 queries but") as err:
        load(f"sqlcard:{base}")
    assert "w.csv" in str(err.value)


def test_bad_input_sqlcard_non_numeric_cardinality(tmp_path: Path):
    base = sql_pair(tmp_path, "SELECT COUNT(*) FROM t a;\nSELECT COUNT(*) FROM t a;\n",
                    "t a##x#5\nt a##x#many\n")
    with pytest.raises(DataError) as err:
        load(f"sqlcard:{base}")
    assert "w.csv, line 2" in str(err.value) and "'many'" in str(err.value)


def test_bad_input_sqlcard_misaligned_lines(tmp_path: Path):
    base = sql_pair(tmp_path, "SELECT COUNT(*) FROM t a WHERE a.x=1;\n", "u b##b.x,=,1#5\n")
    with pytest.raises(DataError, match="do not match") as err:
        load(f"sqlcard:{base}")
    assert "w.sql, line 1" in str(err.value)


# --- sources, data folder, config ----------------------------------------------------------

def test_bad_input_unknown_source_prefix():
    with pytest.raises(ConfigError) as err:
        load("kaggle:titanic")
    msg = str(err.value)
    assert "'kaggle'" in msg and all(p in msg for p in ("uci", "csv", "sqlcard", "sklearn"))


def test_bad_input_unknown_builtin():
    with pytest.raises(ConfigError, match="sklearn:diabetes"):
        load("sklearn:iris")


def test_bad_input_missing_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError) as err:
        load("uci:concrete", data_dir=str(missing))
    assert "data.data_dir" in str(err.value) and "no-such-folder" in str(err.value)
    monkeypatch.setenv("RLREG_DATA", str(missing))
    with pytest.raises(DataError, match="RLREG_DATA") as err:
        load("uci:concrete")
    assert "no-such-folder" in str(err.value)
    # nothing set and no default folder: every tried path is listed
    monkeypatch.delenv("RLREG_DATA")
    tried = [tmp_path / "a" / "shared" / "data", tmp_path / "b" / "shared" / "data"]
    monkeypatch.setattr(data_config, "data_dir_candidates", lambda: tried)
    with pytest.raises(DataError) as err:
        resolve_data_dir()
    assert all(str(p) in str(err.value) for p in tried)


def test_bad_input_config_values():
    with pytest.raises(ConfigError, match="data.val_fraction"):
        load("sklearn:diabetes", val_fraction=0.9)
    with pytest.raises(ConfigError, match="data.categorical"):
        load("sklearn:diabetes", categorical="hash")
    with pytest.raises(ConfigError, match="data.source"):
        load("diabetes")


def test_bad_input_template_field(tmp_path: Path):
    ds = load("sklearn:diabetes")
    with pytest.raises(ConfigError, match=r"\{weight\}.*available: age, sex"):
        render_prompts(ds, [0], DataConfig(prompt_template="w={weight}"))


def test_bad_input_vector_input_for_text_source(tmp_path: Path):
    base = sql_pair(tmp_path, "SELECT COUNT(*) FROM t a;\n" * 4, "t a##x#5\n" * 4)
    ds = load(f"sqlcard:{base}", val_fraction=0.0)
    with pytest.raises(DataError, match="vector input needs a tabular source"):
        fit_feature_stats(ds)
    with pytest.raises(DataError, match="vector input"):
        feature_matrix(ds, np.arange(2), None)  # type: ignore[arg-type]

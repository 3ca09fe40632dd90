"""UCI benchmark folders in the layout of the Bayesian deep-learning papers (data.txt plus index
files, 0-based, with the standard train/test splits)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlreg.data.config import DataConfig, resolve_data_dir
from rlreg.data.dataset import Dataset
from rlreg.data.tabular import LineMap, build_tabular
from rlreg.errors import DataError

# The folders carry no column names. Short names from the UCI descriptions, used only when the
# column counts match (so a differently laid-out copy falls back to x0..x{f-1}).
KNOWN_COLUMNS: dict[str, tuple[list[str], str]] = {
    "bostonHousing": (["crim", "zn", "indus", "chas", "nox", "rm", "age", "dis", "rad", "tax",
                       "ptratio", "b", "lstat"], "medv"),
    "concrete": (["cement", "slag", "fly_ash", "water", "superplasticizer", "coarse_agg",
                  "fine_agg", "age"], "strength"),
    "energy": (["compactness", "surface_area", "wall_area", "roof_area", "height",
                "orientation", "glazing_area", "glazing_dist"], "heating_load"),
    "yacht": (["lcb", "prismatic", "length_disp", "beam_draught", "length_beam", "froude"],
              "resistance"),
    "protein-tertiary-structure": ([f"f{i}" for i in range(1, 10)], "rmsd"),
    "naval-propulsion-plant": ([f"x{i}" for i in range(16)], "compressor_decay"),
}


def read_index_file(path: Path, n_rows: int | None = None) -> np.ndarray:
    """0-based integer indices, one or more per line. Values written as floats ("12.0") are
    accepted when whole; anything else, or an index outside [0, n_rows), names file and line."""
    if not path.is_file():
        raise DataError(f"{path}: index file not found")
    values: list[int] = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        for token in line.split():
            try:
                number = float(token)
            except ValueError:
                raise DataError(f"{path}, line {line_no}: {token!r} is not an index") from None
            if not number.is_integer():
                raise DataError(f"{path}, line {line_no}: index {token!r} is not a whole number")
            index = int(number)
            if n_rows is not None and not 0 <= index < n_rows:
                raise DataError(f"{path}, line {line_no}: row index {index} is out of range "
                                f"[0, {n_rows}) (data.txt has {n_rows} rows)")
            values.append(index)
    return np.asarray(values, dtype=np.int64)


def count_splits(folder: Path) -> int:
    path = folder / "n_splits.txt"
    if path.is_file():
        text = path.read_text().strip()
        try:
            return int(float(text))
        except ValueError:
            raise DataError(f"{path}: expected the number of splits, got {text[:40]!r}") from None
    # No count file: the train index files present are the splits.
    return len(list(folder.glob("index_train_*.txt")))


def read_data_matrix(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        # \s+ copes with tabs, repeated spaces and leading/trailing blanks (kin8nm, concrete).
        frame = pd.read_csv(path, sep=r"\s+", header=None, dtype=np.float64, engine="c")
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: file is empty") from err
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{path}: not a whitespace-separated table of numbers: {err}") from err
    if len(frame) == 0:
        raise DataError(f"{path}: file is empty")
    return frame.to_numpy()


def resolve_uci_folder(spec: str, cfg: DataConfig) -> Path:
    """uci:NAME → <data>/uci/NAME; a spec containing a path separator is a folder path."""
    if "/" in spec or "\\" in spec:
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise DataError(f"UCI folder not found: {folder}")
        return folder
    root = resolve_data_dir(cfg.data_dir) / "uci"
    folder = root / spec
    if not folder.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise DataError(f"UCI data set {spec!r} not found at {folder}; available: "
                        f"{', '.join(known) or '(none)'}")
    return folder


def load_uci(spec: str, cfg: DataConfig) -> Dataset:
    folder = resolve_uci_folder(spec, cfg)
    data_path = folder / "data.txt"
    matrix = read_data_matrix(data_path)
    n_rows, n_cols = matrix.shape
    feature_idx = read_index_file(folder / "index_features.txt", n_cols)
    target_idx = read_index_file(folder / "index_target.txt", n_cols)
    if len(target_idx) != 1:
        raise DataError(f"{folder / 'index_target.txt'}: expected one target column index, "
                        f"got {len(target_idx)}")
    n_splits = count_splits(folder)
    if not 0 <= cfg.split < n_splits:
        raise DataError(f"{folder / 'n_splits.txt'}: data.split={cfg.split} but this data set "
                        f"has {n_splits} splits (0..{n_splits - 1})")
    train_path = folder / f"index_train_{cfg.split}.txt"
    test_path = folder / f"index_test_{cfg.split}.txt"
    train = read_index_file(train_path, n_rows)
    test = read_index_file(test_path, n_rows)
    overlap = np.intersect1d(train, test)
    if len(overlap):
        raise DataError(f"{train_path} and {test_path} share {len(overlap)} rows "
                        f"(e.g. row {int(overlap[0])})")

    names, target_name = KNOWN_COLUMNS.get(folder.name, ([], "y"))
    if len(names) != len(feature_idx):
        names, target_name = [f"x{i}" for i in range(len(feature_idx))], "y"
    frame = pd.DataFrame(matrix[:, feature_idx], columns=names)
    frame[target_name] = matrix[:, int(target_idx[0])]
    dataset = build_tabular(frame, cfg, name=folder.name, source=cfg.source,
                            source_path=str(folder), label=str(data_path),
                            locate=LineMap(data_path, header=False, n_rows=n_rows),
                            official=(train, test), target=target_name)
    dataset.notes.append(f"official split {cfg.split} of {n_splits}; val carved from its train "
                         f"part")
    return dataset

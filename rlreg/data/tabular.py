"""Tables (CSV / TSV / Parquet, and any DataFrame) → Dataset: target choice, numeric checks,
missing values, categorical encoding and splits. uci.py and builtin.py reuse build_tabular."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from rlreg.data.config import DataConfig, resolve_data_dir
from rlreg.data.dataset import Dataset
from rlreg.data.splits import plan_rows
from rlreg.errors import DataError

# More distinct values than this in a one-hot column is almost surely an ID or free text.
MAX_ONEHOT_CATEGORIES = 256

RowLocator = Callable[[int], str]  # 0-based data row -> "line 17" / "row 16" for messages


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _row_locator_by_position(i: int) -> str:
    return f"data row {i + 1}"


@dataclass
class LineMap:
    """Maps a 0-based data row to its 1-based line in a text file with a header. Built only
    when an error needs it; if blank lines or multi-line quoted fields make the count disagree
    with the parsed rows, it falls back to the data row number rather than guess."""

    path: Path
    header: bool = True
    n_rows: int = 0
    _lines: list[int] | None = field(default=None, init=False)

    def __call__(self, i: int) -> str:
        if self._lines is None:
            text = self.path.read_text(encoding="utf-8-sig", errors="replace")
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            lines = [k + 1 for k, line in enumerate(text.split("\n")) if line.strip()]
            self._lines = lines[1:] if self.header else lines
        if len(self._lines) == self.n_rows and 0 <= i < len(self._lines):
            return f"line {self._lines[i]}"
        return _row_locator_by_position(i)


def read_table(path: Path) -> tuple[pd.DataFrame, RowLocator]:
    """Read a CSV / TSV / Parquet file; raise DataError naming the file when it cannot be used."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            locate: RowLocator = _row_locator_by_position
        else:
            # utf-8-sig strips a BOM (airfoil); skipinitialspace handles "1, 2" (elevators);
            # blank lines (abalone) are skipped by default; "?" is the classic UCI missing mark.
            frame = pd.read_csv(path, sep="\t" if suffix in (".tsv", ".tab") else ",",
                                encoding="utf-8-sig", skipinitialspace=True, na_values=["?"])
            locate = LineMap(path, header=True, n_rows=len(frame))
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: file is empty (no header, no rows)") from err
    except pd.errors.ParserError as err:
        kind = suffix.lstrip(".") or "csv"
        raise DataError(f"{path}: cannot parse as {kind}: {str(err).strip()}") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}); re-save it as UTF-8") from err
    except (OSError, ValueError, ImportError) as err:
        raise DataError(f"{path}: cannot read: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame.columns) == 0:
        raise DataError(f"{path}: file is empty (no columns)")
    if len(frame) == 0:
        raise DataError(f"{path}: has a header ({len(frame.columns)} columns) but no data rows")
    return frame, locate


def resolve_target(columns: list[str], target: str | None, label: str) -> str:
    """A column name, or an integer index given as text ("-1"); None means the last column."""
    if target is None or str(target).strip() == "":
        return columns[-1]
    target = str(target).strip()
    if target in columns:
        return target
    try:
        index = int(target)
    except ValueError:
        raise DataError(f"{label}: target column {target!r} not found; available columns: "
                        f"{', '.join(columns)}") from None
    if not -len(columns) <= index < len(columns):
        raise DataError(f"{label}: target index {index} out of range for {len(columns)} columns "
                        f"({', '.join(columns)})")
    return columns[index]


def _strip_strings(series: pd.Series) -> pd.Series:
    return series.map(lambda v: v.strip() if isinstance(v, str) else v)


def _numeric_or_none(series: pd.Series) -> np.ndarray | None:
    """float64 values if every non-missing entry is a number, else None (a categorical column)."""
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    cleaned = _strip_strings(series)
    numbers = pd.to_numeric(cleaned, errors="coerce")
    if (numbers.notna() | cleaned.isna()).all():
        return numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    return None


def _target_values(series: pd.Series, label: str, column: str, locate: RowLocator) -> np.ndarray:
    values = _numeric_or_none(series)
    if values is None:
        cleaned = _strip_strings(series)
        bad = cleaned.notna() & pd.to_numeric(cleaned, errors="coerce").isna()
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{label}: target column {column!r}, {locate(first)}: value "
                        f"{cleaned.iloc[first]!r} is not a number "
                        f"({_count(int(bad.sum()), 'such row')} in all)")
    return values


def encode_categorical(values: np.ndarray, cats: list[str], column: str, encoding: str,
                       ) -> tuple[np.ndarray, list[str]]:
    """Category strings (each one of the sorted `cats`) → one-hot block or ordinal codes, and names."""
    codes = np.searchsorted(np.asarray(cats, dtype=object), values).astype(np.int64)
    if encoding == "ordinal":
        return codes[:, None].astype(np.float64), [column]
    onehot = np.zeros((len(values), len(cats)), dtype=np.float64)
    onehot[np.arange(len(values)), codes] = 1.0
    return onehot, [f"{column}={c}" for c in cats]


def build_tabular(frame: pd.DataFrame, cfg: DataConfig, *, name: str, source: str,
                  source_path: str | None, label: str,
                  locate: RowLocator = _row_locator_by_position,
                  official: tuple[np.ndarray, np.ndarray] | None = None,
                  target: str | None = None) -> Dataset:
    """Turn a DataFrame into a tabular Dataset.

    `label` names the input in messages (usually the file path); `official` holds (train, test)
    row positions in `frame` when the source ships splits. Order of work matters: rows are
    dropped first (so splits see final rows), then split, then missing features are imputed
    with TRAIN statistics only, so no test information leaks into the inputs."""
    columns = list(frame.columns)
    target_col = resolve_target(columns, target if target is not None else cfg.target, label)
    notes: list[str] = []
    y = _target_values(frame[target_col], label, target_col, locate)
    bad_target = ~np.isfinite(y)
    if bad_target.any() and cfg.missing != "drop":
        first = int(np.flatnonzero(bad_target)[0])
        kind = "missing" if np.isnan(y[first]) else "infinite"
        n_bad = _count(int(bad_target.sum()), "row")
        raise DataError(f"{label}: target column {target_col!r}, {locate(first)}: {kind} target "
                        f"value ({n_bad} with missing/inf targets in all); fix the file or set "
                        f"data.missing=drop")
    feature_cols = [c for c in columns if c != target_col]
    if not feature_cols:
        raise DataError(f"{label}: only the target column {target_col!r}; no feature columns")

    numeric: dict[str, np.ndarray] = {}
    categorical_raw: dict[str, np.ndarray] = {}
    missing = np.zeros((len(frame), len(feature_cols)), dtype=bool)
    for j, col in enumerate(feature_cols):
        values = _numeric_or_none(frame[col])
        if values is not None:
            numeric[col] = values
            missing[:, j] = ~np.isfinite(values)
        else:
            raw = _strip_strings(frame[col])
            missing[:, j] = raw.isna().to_numpy() | (raw == "").to_numpy()
            categorical_raw[col] = raw.astype(object).where(~missing[:, j], None).to_numpy()
    if missing.any() and cfg.missing == "error":
        row = int(np.flatnonzero(missing.any(axis=1))[0])
        col = feature_cols[int(np.flatnonzero(missing[row])[0])]
        n_bad = _count(int(missing.sum()), "such cell")
        raise DataError(f"{label}: column {col!r}, {locate(row)}: missing or non-finite feature "
                        f"value ({n_bad} in all); set data.missing=drop or data.missing=mean "
                        f"to handle them")

    keep = ~bad_target
    if bad_target.any():
        notes.append(f"dropped {int(bad_target.sum())} rows with missing/inf targets")
    if cfg.missing == "drop" and missing.any():
        row_missing = missing.any(axis=1) & keep
        notes.append(f"dropped {int(row_missing.sum())} rows with missing feature values")
        keep &= ~missing.any(axis=1)
    if not keep.any():
        raise DataError(f"{label}: no rows left after dropping rows with missing values")

    kept_ids = np.flatnonzero(keep)
    if official is not None:
        # Official indices refer to original rows; follow them through the drops.
        position = np.cumsum(keep) - 1
        official = tuple(position[idx[keep[idx]]] for idx in official)  # type: ignore[assignment]
    rows, splits = plan_rows(len(kept_ids), val_fraction=cfg.val_fraction,
                             test_fraction=cfg.test_fraction, seed=cfg.seed,
                             max_rows=cfg.max_rows, official=official)
    row_ids = kept_ids[rows]
    train = splits.train

    blocks: list[np.ndarray] = []
    names: list[str] = []
    categories: dict[str, list[str]] = {}
    fills: dict[str, float | str] = {}
    for j, col in enumerate(feature_cols):
        hole = missing[row_ids, j]
        if col in numeric:
            values = numeric[col][row_ids].copy()
            if cfg.missing == "mean":
                # Every column's fill is kept (not only those with holes here): prediction fills
                # new rows' missing cells with the same train statistics.
                present = values[train][~hole[train]]
                fills[col] = float(present.mean()) if len(present) else 0.0
            if hole.any():
                values[hole] = fills[col]
                notes.append(f"filled {int(hole.sum())} missing values in {col!r} with the "
                             f"train mean")
            blocks.append(values[:, None])
            names.append(col)
            continue
        values = categorical_raw[col][row_ids]
        if cfg.missing == "mean":
            present = pd.Series(values[train][~hole[train]], dtype=object)
            fills[col] = str(present.mode().iloc[0]) if len(present) else "missing"
        if hole.any():
            values = np.where(hole, fills[col], values)
            notes.append(f"filled {int(hole.sum())} missing values in {col!r} with the train mode")
        values = np.asarray([str(v) for v in values], dtype=object)
        cats = sorted(set(values.tolist()))
        if cfg.categorical == "onehot" and len(cats) > MAX_ONEHOT_CATEGORIES:
            raise DataError(f"{label}: column {col!r} has {len(cats)} distinct non-numeric values, "
                            f"too many to one-hot encode (max {MAX_ONEHOT_CATEGORIES}); is it an "
                            f"ID or free text? Use data.categorical=ordinal or remove the column")
        encoded, encoded_names = encode_categorical(values, cats, col, cfg.categorical)
        categories[col] = cats
        blocks.append(encoded)
        names.extend(encoded_names)
    if categories:
        notes.append(f"{cfg.categorical} encoding of categorical columns: {', '.join(categories)}")
    if len(row_ids) < len(frame) and cfg.max_rows is not None:
        notes.append(f"subsampled to {len(row_ids)} of {len(frame)} rows "
                     f"(data.max_rows={cfg.max_rows})")

    return Dataset(name=name, kind="tabular", features=np.hstack(blocks), feature_names=names,
                   texts=None, y=y[row_ids], target_name=target_col, splits=splits,
                   source_path=source_path, source=source, source_columns=feature_cols,
                   categorical=categories, categorical_encoding=cfg.categorical,
                   fill=fills, row_ids=row_ids, notes=notes)


def resolve_table_path(spec: str, cfg: DataConfig) -> Path:
    """PATH as given (relative to the working directory) if it exists, else inside the data
    folder: <data>/PATH, <data>/tabular/PATH, and both with .csv added (so csv:abalone works)."""
    given = Path(spec).expanduser()
    if given.is_file():
        return given
    if given.is_absolute():
        raise DataError(f"data file not found: {given}")
    data_dir = resolve_data_dir(cfg.data_dir)
    tried = [data_dir / spec, data_dir / "tabular" / spec]
    if not given.suffix:
        tried += [p.with_name(p.name + ".csv") for p in tried]
    for path in tried:
        if path.is_file():
            return path
    raise DataError(f"data file not found: {spec!r}; tried {given.resolve()}, "
                    f"{', '.join(str(p) for p in tried)}")


def load_table(spec: str, cfg: DataConfig) -> Dataset:
    """Loader for `csv:PATH` / `file:PATH` (CSV, TSV or Parquet by extension)."""
    path = resolve_table_path(spec, cfg)
    frame, locate = read_table(path)
    return build_tabular(frame, cfg, name=path.stem, source=cfg.source, source_path=str(path),
                         label=str(path), locate=locate)

"""New rows from a file or an array (what `rlreg predict` and RLRegressor.predict read), and
writing result rows. Values are kept as written; the checkpoint's preprocessing interprets them."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlreg.errors import ConfigError, DataError
from rlreg.io import atomic_open

CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
MISSING_MARKS = ("", "?", "nan", "NaN", "NA", "N/A")  # "?" is the UCI mark training read as missing


@dataclass
class Rows:
    """Rows read from a file: column names in first-seen order, raw values, where each row was."""

    columns: list[str]
    values: list[dict[str, Any]]
    where: list[str]  # "line 5" per row, for messages
    label: str  # the file, for messages

    def missing_columns(self, expected: Sequence[str]) -> list[str]:
        return [c for c in expected if c not in self.columns]


def _check_suffix(path: Path, flag: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + JSONL_SUFFIXES:
        raise ConfigError(f"{flag} {path}: unknown file type {suffix or '(none)'!r}; use "
                          f"{', '.join(CSV_SUFFIXES + JSONL_SUFFIXES)}")
    return suffix


def read_rows(path: str | Path) -> Rows:
    """CSV (header row) or JSONL (one object a line), by extension; values kept as written."""
    path = Path(path)
    suffix = _check_suffix(path, "--input")
    if not path.is_file():
        raise DataError(f"--input {path}: file not found")
    try:
        rows = _read_jsonl(path) if suffix in JSONL_SUFFIXES else _read_csv(path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from err
    if not rows.values:
        raise DataError(f"{path}: no data rows")
    return rows


def _read_csv(path: Path) -> Rows:
    with path.open(newline="", encoding="utf-8-sig") as stream:  # -sig: a BOM is not part of the name
        reader = csv.reader(stream)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file (no header row)")
        columns = [c.strip() for c in header]
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise DataError(f"{path}: column(s) {', '.join(map(repr, duplicated))} appear more than once")
        values, where = [], []
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue  # blank line
            if len(fields) > len(columns):
                raise DataError(f"{path}, line {reader.line_num}: {len(fields)} fields but the header has "
                                f"{len(columns)}")
            values.append(dict(zip(columns, fields)))  # short rows: the absent cells are missing
            where.append(f"line {reader.line_num}")
    return Rows(columns=columns, values=values, where=where, label=str(path))


def read_json_objects(path: Path) -> list[tuple[int, dict]]:
    """(1-based line, object) of each non-blank line of a JSON-lines file; DataError naming the
    line of anything else."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM is not part of the first key
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from err
    out = []
    # split("\n"), not splitlines(): a JSON string may hold U+2028, which splitlines breaks on
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got "
                            f"{type(row).__name__}")
        out.append((number, row))
    return out


def _read_jsonl(path: Path) -> Rows:
    columns: dict[str, None] = {}  # ordered set
    values, where = [], []
    for number, row in read_json_objects(path):
        columns.update(dict.fromkeys(row))
        values.append(row)
        where.append(f"line {number}")
    return Rows(columns=list(columns), values=values, where=where, label=str(path))


def rows_from_arrays(X: np.ndarray, names: Sequence[str], label: str = "X") -> Rows:
    """Numeric array rows named like the training columns (the estimator's predict)."""
    X = np.asarray(X, dtype=np.float64)
    values = [dict(zip(names, row)) for row in X.tolist()]
    return Rows(columns=list(names), values=values, where=[f"row {i}" for i in range(len(X))], label=label)


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip() in MISSING_MARKS


def _cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_rows(path: str | Path, columns: list[str], records: list[dict]) -> Path:
    """CSV or JSONL by extension, written atomically (rlreg.io)."""
    path = Path(path)
    suffix = _check_suffix(path, "--output")
    with atomic_open(path, newline="") as stream:
        if suffix in CSV_SUFFIXES:
            writer = csv.writer(stream)
            writer.writerow(columns)
            for record in records:
                writer.writerow(["" if _cell(record.get(c)) is None else _cell(record.get(c)) for c in columns])
        else:
            for record in records:
                stream.write(json.dumps({c: _cell(record.get(c)) for c in columns}) + "\n")
    return path

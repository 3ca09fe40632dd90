"""JSON lines with text fields and a numeric target: one object a line, e.g. a generative reward
model's {"prompt": ..., "response": ..., "score": 7.5}.

The first object fixes the fields: data.target names the target (default: its last key) and every
other field is a text field of the row, rendered as "name: value" lines or into
data.prompt_template. Every later row must carry exactly these fields, so a typo in one line
is an error rather than a silently empty field."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rlreg.data.config import DataConfig
from rlreg.data.dataset import Dataset
from rlreg.data.rows import read_json_objects
from rlreg.data.splits import plan_usable_rows
from rlreg.errors import DataError


def _objects(path: Path) -> list[tuple[int, dict]]:
    """(1-based line, object) of each non-blank line."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (jsonl paths are relative to the working "
                        f"directory, {Path.cwd()})")
    return read_json_objects(path)


def field_text(value: Any, float_format: str, where: str) -> str | None:
    """A text field's value as prompt text: strings as they are, numbers with data.float_format
    (as tabular features are), booleans as JSON writes them; None for a missing value (null or
    NaN). Lists and objects are an error naming `where`: there is no one way to write them."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return float_format.format(float(value))
    raise DataError(f"{where}: holds a JSON {'list' if isinstance(value, list) else 'object'}; "
                    f"text fields must be strings or numbers (flatten it into a string)")


def _target_value(value: Any, where: str) -> float:
    """The target as a float; NaN for a missing or non-finite one (data.missing decides)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: {value!r} is not a number")
    return float(value) if math.isfinite(value) else math.nan


def _choose_target(path: Path, line: int, fields: list[str], target: str | None) -> str:
    if target is None:
        return fields[-1]
    if target not in fields:
        raise DataError(f"{path}, line {line}: data.target={target!r} is not a field of the first "
                        f"row; fields: {', '.join(fields)}")
    return target


def _check_keys(path: Path, line: int, row: dict, fields: list[str], target: str,
                first_line: int) -> None:
    if target not in row:
        raise DataError(f"{path}, line {line}: missing target field {target!r}")
    absent = [f for f in fields if f not in row]
    if absent:
        raise DataError(f"{path}, line {line}: missing field(s) {', '.join(map(repr, absent))} "
                        f"(the first row, line {first_line}, has them)")
    extra = [f for f in row if f not in fields]
    if extra:
        raise DataError(f"{path}, line {line}: field(s) {', '.join(map(repr, extra))} not in the "
                        f"first row (line {first_line}); every row needs the same fields")


def load_jsonl(spec: str, cfg: DataConfig) -> Dataset:
    path = Path(spec).expanduser()
    records = _objects(path)
    if not records:
        raise DataError(f"{path}: file is empty (no JSON objects)")
    first_line, first = records[0]
    fields = list(first)
    if not fields:
        raise DataError(f"{path}, line {first_line}: the first object has no fields")
    target = _choose_target(path, first_line, fields, cfg.target)
    names = [f for f in fields if f != target]
    if not names:
        raise DataError(f"{path}, line {first_line}: only the target field {target!r}; a row "
                        f"needs at least one text field")

    y = np.empty(len(records), dtype=np.float64)
    columns: dict[str, list[str | None]] = {name: [] for name in names}
    for i, (line, row) in enumerate(records):
        _check_keys(path, line, row, fields, target, first_line)
        y[i] = _target_value(row[target], f"{path}, line {line}, target {target!r}")
        for name in names:
            columns[name].append(field_text(row[name], cfg.float_format,
                                            f"{path}, line {line}, field {name!r}"))

    notes: list[str] = []
    gaps = [name for name in names if None in columns[name]]
    bad = ~np.isfinite(y)
    for name in gaps:
        bad |= np.asarray([v is None for v in columns[name]])
    def refusal(i: int) -> str:
        what = (f"missing or non-finite target {target!r}" if not np.isfinite(y[i]) else
                f"missing value (null) in field {next(n for n in names if columns[n][i] is None)!r}")
        return f"{path}, line {records[i][0]}: {what}"

    row_ids, splits = plan_usable_rows(bad, cfg, str(path), refusal, "rows with a missing target or text field",
                                       "rows", notes)
    text_fields = {name: [columns[name][i] for i in row_ids] for name in names}
    return Dataset(name=path.stem, kind="text", features=None, feature_names=[], texts=None,
                   text_fields=text_fields, y=y[row_ids], target_name=target, splits=splits,
                   source_path=str(path), source=cfg.source, row_ids=row_ids, notes=notes)

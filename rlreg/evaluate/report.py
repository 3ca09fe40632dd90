"""Plain-text comparison tables and crash-safe metrics JSON."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MISSING = "-"


def _format_number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    # Fixed 4 decimals reads best for errors and R²; very large or tiny values switch to
    # scientific so columns such as SQL cardinality RMSE stay narrow.
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4f}"
    return f"{value:.3e}"


def format_cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _format_number(float(value))
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 2:
        return f"[{format_cell(value[0])}, {format_cell(value[1])}]"  # a CI pair
    return str(value)


def _is_numeric(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Aligned plain-text table: one line per row, a header and a rule.

    Numbers are right-aligned, everything else left-aligned; a key a row lacks shows '-'.
    """
    cells = [[format_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
    numeric = [any(_is_numeric(row.get(column)) for row in rows) for column in columns]

    def render(line: Sequence[str]) -> str:
        parts = [text.rjust(w) if right else text.ljust(w) for text, w, right in zip(line, widths, numeric)]
        return "  ".join(parts).rstrip()

    lines = [render(list(columns)), "  ".join("-" * w for w in widths)]
    lines.extend(render(line) for line in cells)
    return "\n".join(lines)


def to_json_safe(value: Any) -> Any:
    """Plain Python types for json: numpy scalars/arrays unwrapped, NaN and ±inf → None
    (JSON has no NaN; null keeps the file readable by strict parsers)."""
    if isinstance(value, dict):
        return {str(key): to_json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    return value


def write_metrics_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write payload as JSON atomically: a temp file in the same directory, then
    os.replace, so a reader never sees half a file and a crash leaves the old one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # allow_nan=False makes any NaN that slipped past to_json_safe an error, not bad JSON.
    text = json.dumps(to_json_safe(payload), indent=2, sort_keys=True, allow_nan=False)
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp makes it owner-only; a results file is for sharing
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target

"""Plain-text comparison tables and crash-safe metrics JSON."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlreg.io import write_text

MISSING = "-"
REPORT_COLUMNS = ["method", "rmse", "mae", "r2", "spearman", "coverage90", "invalid_rate"]


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
    """Write payload as JSON atomically (rlreg.io); NaN and ±inf become null."""
    # allow_nan=False makes any NaN that slipped past to_json_safe an error, not bad JSON.
    return write_text(path, json.dumps(to_json_safe(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")


def report_row(method: str, metrics: dict) -> dict:
    return {"method": method, **{k: metrics.get(k) for k in REPORT_COLUMNS[1:]}}


def method_name(cfg) -> str:
    """The supervised stage's name in tables: CE, NTL_WAS or DIST2."""
    return "CE" if cfg.sft.loss == "ce" else cfg.sft.loss.upper()


def results_table(payload: dict) -> str:
    """The test table of a `rlreg sft` / `rlreg train` metrics payload: the model (before and after
    RL for train) and its baselines."""
    name = payload["method"]
    rows = []
    if "before" in payload:
        rows.append(report_row(name, payload["before"]["test"]))
        name = f"{name}+{payload['algorithm'].upper()}"
    rows.append(report_row(name, payload["test"]))
    rows += [report_row(baseline.upper(), result["test"]) for baseline, result in payload["baselines"].items()]
    return format_table(rows, REPORT_COLUMNS)

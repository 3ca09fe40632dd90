"""SQL cardinality estimation (learnedcardinalities workloads): a COUNT(*) query in, its true
row count out — a text-to-number task whose targets span many orders of magnitude.

Layout: NAME.sql holds one query per line; NAME.csv holds, on the SAME line number, the query
in parts — tables#joins#predicates#cardinality. The files carry no shared key, so the loader
checks the correspondence it relies on: each query's FROM list must equal field 1 of its csv
line (true for all lines of the shipped synthetic, scale and job-light files)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from rlreg.data.config import DataConfig, resolve_data_dir
from rlreg.data.dataset import Dataset
from rlreg.data.splits import plan_usable_rows
from rlreg.errors import DataError

_FROM = re.compile(r"\bFROM\s+(.*?)(?:\s+WHERE\b|\s*;?\s*$)", re.IGNORECASE | re.DOTALL)


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8-sig")
    return [(k, line.strip()) for k, line in enumerate(text.splitlines(), start=1) if line.strip()]


def resolve_sqlcard_base(spec: str, cfg: DataConfig) -> Path:
    """sqlcard:NAME → <data>/sqlcard/NAME; a spec with a path separator is used as given.
    Returns the path without extension; .sql and .csv are added."""
    if "/" in spec or "\\" in spec:
        return Path(spec).expanduser().with_suffix("")
    root = resolve_data_dir(cfg.data_dir) / "sqlcard"
    base = root / spec
    if not base.with_suffix(".sql").is_file():
        known = sorted(p.stem for p in root.glob("*.sql")) if root.is_dir() else []
        raise DataError(f"sqlcard workload {spec!r} not found at {base}.sql; available: "
                        f"{', '.join(known) or '(none)'}")
    return base


def load_sqlcard(spec: str, cfg: DataConfig) -> Dataset:
    base = resolve_sqlcard_base(spec, cfg)
    sql_path, csv_path = base.with_name(base.name + ".sql"), base.with_name(base.name + ".csv")
    queries, labels = _numbered_lines(sql_path), _numbered_lines(csv_path)
    if not queries:
        raise DataError(f"{sql_path}: file is empty (no queries)")
    if len(queries) != len(labels):
        raise DataError(f"{sql_path} has {len(queries)} queries but {csv_path} has "
                        f"{len(labels)} lines; they must correspond line by line")

    y = np.empty(len(queries), dtype=np.float64)
    for i, ((sql_line, query), (csv_line, label)) in enumerate(zip(queries, labels)):
        fields = label.split("#")
        match = _FROM.search(query)
        if match and len(fields) > 1 and match.group(1).strip() != fields[0].strip():
            raise DataError(f"{sql_path}, line {sql_line} and {csv_path}, line {csv_line} do not "
                            f"match: FROM {match.group(1).strip()!r} vs tables {fields[0]!r}")
        raw = fields[-1].strip()
        try:
            y[i] = float(raw) if raw else math.nan
        except ValueError:
            raise DataError(f"{csv_path}, line {csv_line}: cardinality (last '#' field) "
                            f"{raw!r} is not a number") from None

    notes: list[str] = []
    row_ids, splits = plan_usable_rows(
        ~np.isfinite(y), cfg, str(csv_path),
        lambda first: f"{csv_path}, line {labels[first][0]}: missing or infinite cardinality",
        "queries with missing/inf cardinality", "queries", notes)
    return Dataset(name=base.name, kind="text", features=None, feature_names=[],
                   texts=[queries[i][1] for i in row_ids], y=y[row_ids],
                   target_name="cardinality", splits=splits, source_path=str(sql_path),
                   source=cfg.source, row_ids=row_ids, notes=notes)

"""Evaluation: aggregate K samples per input, score them (metrics with bootstrap CIs,
CRPS, interval coverage), compare with classical baselines, and report (tables, JSON,
plots). NumPy / SciPy / scikit-learn / matplotlib only — no torch, vLLM or Ray, so it
runs anywhere results land."""

from rlreg.evaluate.aggregate import (
    AGGREGATIONS,
    TRIM_FRACTION,
    aggregate,
    choose_aggregation,
    rows_without_valid,
    sample_interval,
)
from rlreg.baselines.classical import BASELINES, TARGET_TRANSFORMS, fit_predict_baseline, text_features
from rlreg.evaluate.metrics import (
    bootstrap_ci,
    coverage,
    crps_per_row,
    crps_samples,
    evaluate_point,
    evaluate_samples,
    point_metrics,
)
from rlreg.evaluate.report import format_table, write_metrics_json

# Plots import matplotlib, which is slow to load: `from rlreg.evaluate.plots import ...`.

__all__ = [
    "AGGREGATIONS",
    "BASELINES",
    "TARGET_TRANSFORMS",
    "TRIM_FRACTION",
    "aggregate",
    "bootstrap_ci",
    "choose_aggregation",
    "coverage",
    "crps_per_row",
    "crps_samples",
    "evaluate_point",
    "evaluate_samples",
    "fit_predict_baseline",
    "format_table",
    "point_metrics",
    "rows_without_valid",
    "sample_interval",
    "text_features",
    "write_metrics_json",
]

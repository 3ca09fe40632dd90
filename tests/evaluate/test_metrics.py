"""Metrics against scipy/sklearn, CRPS against brute force and closed forms, bootstrap CIs,
evaluate_* outputs, plus the report (table, JSON) and plot writers."""

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from rlreg.errors import DataError
from rlreg.evaluate.metrics import (
    batched_r2,
    batched_rmse,
    bootstrap_ci,
    coverage,
    crps_per_row,
    crps_samples,
    evaluate_point,
    evaluate_samples,
    point_metrics,
)
from rlreg.evaluate.plots import parity_plot, residual_plot
from rlreg.evaluate.report import format_table, write_metrics_json


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    y = rng.normal(size=120)
    return y, y + 0.5 * rng.normal(size=120)


# --- point metrics ---

def test_point_metrics_match_sklearn_and_scipy(pair):
    y, yhat = pair
    metrics = point_metrics(y, yhat)
    assert metrics["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, yhat)))
    assert metrics["mae"] == pytest.approx(mean_absolute_error(y, yhat))
    assert metrics["r2"] == pytest.approx(r2_score(y, yhat))
    assert metrics["spearman"] == pytest.approx(stats.spearmanr(y, yhat).statistic)
    assert metrics["kendall"] == pytest.approx(stats.kendalltau(y, yhat).statistic)
    assert metrics["n"] == 120 and metrics["n_dropped"] == 0


def test_point_metrics_nan_policy(pair):
    y, yhat = pair
    yhat = yhat.copy()
    yhat[[3, 7]] = np.nan
    with pytest.raises(ValueError, match="2 of 120 rows"):
        point_metrics(y, yhat)
    omitted = point_metrics(y, yhat, nan_policy="omit")
    keep = np.isfinite(yhat)
    assert omitted["n"] == 118 and omitted["n_dropped"] == 2
    assert omitted["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y[keep], yhat[keep])))
    with pytest.raises(ValueError, match="nan_policy"):
        point_metrics(y, yhat, nan_policy="ignore")


def test_constant_predictions_give_nan_rank_correlation_not_an_error(pair):
    y, _ = pair
    metrics = point_metrics(y, np.full_like(y, 0.3))
    assert math.isnan(metrics["spearman"]) and math.isnan(metrics["kendall"])
    assert metrics["r2"] == pytest.approx(r2_score(y, np.full_like(y, 0.3)))


def test_batched_statistics_match_sklearn(pair):
    y, yhat = pair
    stacked_y, stacked_hat = np.stack([y, y[::-1]]), np.stack([yhat, yhat[::-1]])
    np.testing.assert_allclose(batched_rmse(stacked_y, stacked_hat), math.sqrt(mean_squared_error(y, yhat)))
    np.testing.assert_allclose(batched_r2(stacked_y, stacked_hat), r2_score(y, yhat))


# --- CRPS ---

def _crps_brute_force(samples, valid, y):
    scores = []
    for row in range(samples.shape[0]):
        x = samples[row][valid[row]]
        to_target = np.mean([abs(a - y[row]) for a in x])
        pairwise = np.mean([abs(a - b) for a in x for b in x])
        scores.append(to_target - 0.5 * pairwise)
    return float(np.mean(scores))


def test_crps_matches_brute_force_double_loop():
    rng = np.random.default_rng(3)
    samples = rng.normal(size=(6, 9)) * 3
    valid = rng.random((6, 9)) > 0.3
    valid[:, 0] = True
    y = rng.normal(size=6)
    assert crps_samples(samples, valid, y) == pytest.approx(_crps_brute_force(samples, valid, y))


def test_crps_closed_forms():
    # All samples equal to c: the empirical distribution is a point mass, CRPS = |c − y|.
    samples = np.full((3, 7), 2.0)
    y = np.array([2.0, 5.0, -1.0])
    np.testing.assert_allclose(crps_per_row(samples, None, y), [0.0, 3.0, 3.0])
    # Many N(0, 1) samples at y = 0 approach the Gaussian CRPS (2φ(0) − 1/√π).
    gaussian = np.random.default_rng(4).normal(size=(1, 20000))
    expected = 2 * stats.norm.pdf(0.0) - 1 / math.sqrt(math.pi)
    assert crps_samples(gaussian, None, np.zeros(1)) == pytest.approx(expected, abs=0.01)


def test_crps_refuses_rows_without_valid_samples():
    samples = np.ones((2, 3))
    valid = np.array([[True, True, True], [False, False, False]])
    assert np.isnan(crps_per_row(samples, valid, np.zeros(2))[1])
    with pytest.raises(DataError, match="1 rows"):
        crps_samples(samples, valid, np.zeros(2))


# --- coverage and bootstrap ---

def test_coverage_on_hand_made_intervals():
    lo, hi = np.zeros(4), np.ones(4)
    assert coverage(lo, hi, np.array([0.5, 1.0, 1.5, -0.1])) == 0.5  # bounds are inclusive
    assert coverage(lo, hi, np.array([0.0, 0.2, 0.9, 1.0])) == 1.0
    with pytest.raises(ValueError, match="lo > hi"):
        coverage(hi, lo, np.zeros(4))


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_rows():
    rng = np.random.default_rng(5)
    widths = []
    for n in (100, 2000):
        y = rng.normal(size=n)
        yhat = y + rng.normal(size=n)
        lo, hi = bootstrap_ci(batched_rmse, y, yhat, n_boot=500)
        assert lo < batched_rmse(y, yhat) < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # width ~ 1/√n: 20× the rows, ~4.5× narrower


def test_bootstrap_batched_and_looped_paths_agree_and_are_seeded(pair):
    y, yhat = pair
    fast = bootstrap_ci(batched_rmse, y, yhat, n_boot=200, seed=7)
    slow = bootstrap_ci(lambda a, b: math.sqrt(mean_squared_error(a, b)), y, yhat, n_boot=200, seed=7)
    assert fast == pytest.approx(slow)
    assert bootstrap_ci(batched_rmse, y, yhat, n_boot=200, seed=8) != fast


def test_bootstrap_thousand_resamples_of_thousand_rows_is_fast():
    rng = np.random.default_rng(6)
    y = rng.normal(size=1000)
    start = time.perf_counter()
    bootstrap_ci(batched_r2, y, y + rng.normal(size=1000), n_boot=1000)
    assert time.perf_counter() - start < 1.0


# --- evaluate_samples / evaluate_point ---

def _sample_matrix(n=150, k=32, seed=9):
    rng = np.random.default_rng(seed)
    y = 10 + 3 * rng.normal(size=n)
    samples = y[:, None] + rng.normal(size=(n, k))
    valid = rng.random((n, k)) > 0.1
    valid[0] = False  # one row never decoded
    return samples, valid, y


def test_evaluate_samples_keys_units_and_counts():
    samples, valid, y = _sample_matrix()
    result = evaluate_samples(samples, valid, y, "median", to_normalised=lambda v: (v - 10) / 3, n_boot=200)
    for key in ("rmse", "mae", "r2", "spearman", "kendall", "crps", "coverage90", "invalid_rate", "n", "aggregation"):
        assert key in result
    assert result["aggregation"] == "median"
    assert result["n"] == 149 and result["n_no_valid"] == 1 and result["n_rows"] == 150
    assert result["invalid_rate"] == pytest.approx(1 - valid.mean())
    # Samples are y + N(0, 1): the 5–95 % interval should cover y about 90 % of the time.
    assert 0.8 < result["coverage90"] <= 1.0
    for name in ("rmse", "mae", "r2"):
        lo, hi = result[f"{name}_ci"]
        assert lo <= result[name] <= hi
    normalised = result["normalised"]
    assert normalised["rmse"] == pytest.approx(result["rmse"] / 3)
    assert normalised["crps"] == pytest.approx(result["crps"] / 3)
    assert normalised["r2"] == pytest.approx(result["r2"])  # affine map leaves R² unchanged
    assert "coverage90" not in normalised


def test_evaluate_samples_without_any_valid_sample_reports_nan():
    samples, valid, y = _sample_matrix(n=5, k=4)
    result = evaluate_samples(samples, np.zeros_like(valid), y, "mean")
    assert result["n"] == 0 and result["n_no_valid"] == 5 and result["invalid_rate"] == 1.0
    assert math.isnan(result["rmse"]) and math.isnan(result["crps"])
    assert "normalised" not in result


def test_evaluate_point_has_point_keys_only(pair):
    y, yhat = pair
    result = evaluate_point(yhat, y, to_normalised=lambda v: 2 * v, n_boot=100)
    assert result["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, yhat)))
    assert result["r2"] == pytest.approx(r2_score(y, yhat))  # argument order: (yhat, y)
    assert "crps" not in result and "coverage90" not in result
    assert result["normalised"]["mae"] == pytest.approx(2 * result["mae"])


# --- report ---

def test_write_metrics_json_round_trip_with_nan_as_null(tmp_path):
    payload = {"rmse": np.float32(1.5), "r2": float("nan"), "n": np.int64(3),
               "ci": np.array([0.1, np.inf]), "nested": {"crps": np.nan, "ok": True}}
    path = write_metrics_json(tmp_path / "out" / "metrics.json", payload)
    text = path.read_text()

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    loaded = json.loads(text, parse_constant=refuse)  # strict: NaN/Infinity would fail here
    assert loaded == {"rmse": 1.5, "r2": None, "n": 3, "ci": [0.1, None], "nested": {"crps": None, "ok": True}}
    write_metrics_json(path, {"rmse": 2.0})  # overwrite in place
    assert json.loads(path.read_text()) == {"rmse": 2.0}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left


def test_format_table_aligns_columns():
    rows = [
        {"method": "sft", "rmse": 1.23456, "r2": 0.9, "coverage90": 0.88},
        {"method": "sft+remax", "rmse": 0.5, "r2": float("nan")},
    ]
    table = format_table(rows, ["method", "rmse", "r2", "coverage90"])
    lines = table.splitlines()
    assert lines[0].split() == ["method", "rmse", "r2", "coverage90"]
    assert set(lines[1]) <= {"-", " "}
    assert "1.2346" in lines[2] and "nan" in lines[3] and lines[3].rstrip().endswith("-")
    # Numbers are right-aligned: the rmse values end in the same column.
    assert lines[2].index("1.2346") == lines[3].index("0.5000")


# --- plots ---

def test_plots_write_png_files(tmp_path):
    rng = np.random.default_rng(10)
    y = rng.normal(size=80)
    yhat = y + 0.3 * rng.normal(size=80)
    yhat[0] = np.nan  # dropped, not fatal
    paths = [
        parity_plot(y, yhat, tmp_path / "parity.png", "parity", lo=yhat - 0.5, hi=yhat + 0.5),
        parity_plot(y, yhat, tmp_path / "parity_plain.png", "parity"),
        residual_plot(y, yhat, tmp_path / "residual.png", "residuals"),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="no row"):
        residual_plot(y, np.full_like(y, np.nan), tmp_path / "empty.png", "empty")


def test_evaluate_package_does_not_import_torch():
    code = "import sys, rlreg.evaluate, rlreg.evaluate.plots; print(any(m in sys.modules for m in ('torch', 'vllm', 'ray')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""benchmarks.quality.stats: the statistics behind the quality tables (pure logic, fast)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from benchmarks.quality.stats import (aggregate_iqm, dataset_summary, format_tables, markdown_table,
                                      normalised_scores, plot_aggregate, plot_dataset_rmse,
                                      plot_sampling_curves, sampling_curve_summary)

METHODS = ["Ridge", "HGB", "RegHead", "CE", "CE+NTL", "CE+ReMax", "CE+GRPO", "CE+GenRe2"]
PNG = b"\x89PNG\r\n\x1a\n"


def rec(ds, split, method, rmse, ci=None, scale=1.0):
    ci = [rmse - 0.1, rmse + 0.1] if ci is None else ci
    return {"dataset": ds, "split": split, "method": method, "rmse": rmse, "rmse_ci": ci, "scale": scale}


def grid(n_ds, n_splits, seed=0):
    """Every method on every (dataset, split); datasets in different units."""
    rng = np.random.default_rng(seed)
    out = []
    for d in range(n_ds):
        unit = 10.0 ** d
        for s in range(n_splits):
            for i, m in enumerate(METHODS):
                out.append(rec(f"ds{d}", s, m, unit * (1.0 - 0.05 * i + 0.1 * rng.random()), scale=unit * 1.5))
    return out


def curves(n_ds, n_splits):
    return [{"dataset": f"ds{d}", "split": s, "method": m, "k": k, "rmse": 1.0 / k + s + 0.01 * i}
            for d in range(n_ds) for s in range(n_splits) for i, m in enumerate(METHODS)
            for k in (1, 4, 16, 64)]


def strict_json(obj):
    return json.loads(json.dumps(obj, allow_nan=False))


# --- per dataset ---------------------------------------------------------------------------


def test_t_interval_matches_scipy_by_hand():
    vals = [1.0, 2.0, 4.0]
    s = dataset_summary([rec("a", i, "CE", v) for i, v in enumerate(vals)])
    row = s["datasets"]["a"]["methods"]["CE"]
    mean = sum(vals) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert row["mean"] == pytest.approx(mean)
    assert row["ci"] == pytest.approx([mean - half, mean + half])
    assert row["ci_kind"] == "t-over-splits"
    assert (row["n"], row["n_failed"]) == (3, 0)


def test_single_split_falls_back_to_run_ci():
    s = dataset_summary([rec("a", 0, "CE", 2.0, ci=[1.7, 2.4]), rec("a", 0, "Ridge", 3.0, ci=None)])
    row = s["datasets"]["a"]["methods"]["CE"]
    assert row["ci"] == [1.7, 2.4] and row["ci_kind"] == "test-bootstrap" and row["n"] == 1
    # the only finite run of two: still the run's own CI, the failed one counted
    s = dataset_summary([rec("a", 0, "CE", float("nan")), rec("a", 1, "CE", 2.0, ci=[1.5, 2.5])])
    row = s["datasets"]["a"]["methods"]["CE"]
    assert row["ci"] == [1.5, 2.5] and row["ci_kind"] == "test-bootstrap"
    assert (row["n"], row["n_failed"]) == (1, 1)
    # no usable run CI: no interval rather than a made-up one
    s = dataset_summary([{**rec("a", 0, "CE", 2.0), "rmse_ci": [float("nan"), float("nan")]}])
    assert s["datasets"]["a"]["methods"]["CE"]["ci"] is None
    assert s["datasets"]["a"]["methods"]["CE"]["ci_kind"] is None


def test_nan_runs_are_counted_not_used():
    nan = float("nan")
    recs = [rec("a", 0, "CE", 1.0), rec("a", 1, "CE", nan), rec("a", 2, "CE", 3.0),
            rec("a", 0, "HGB", nan), {**rec("a", 1, "HGB", 0.0), "rmse": None}]
    s = strict_json(dataset_summary(recs))
    ce, hgb = s["datasets"]["a"]["methods"]["CE"], s["datasets"]["a"]["methods"]["HGB"]
    assert ce["mean"] == pytest.approx(2.0) and (ce["n"], ce["n_failed"]) == (2, 1)
    assert hgb["mean"] is None and hgb["ci"] is None and (hgb["n"], hgb["n_failed"]) == (0, 2)
    agg = strict_json(aggregate_iqm(recs, ["CE", "HGB"], n_boot=50))
    assert agg["methods"]["CE"]["iqm"] == pytest.approx(2.0)
    assert (agg["methods"]["CE"]["n_runs"], agg["methods"]["CE"]["n_failed"]) == (2, 1)
    assert agg["methods"]["HGB"]["iqm"] is None and agg["methods"]["HGB"]["n_failed"] == 2
    assert "HGB" in format_tables(s, agg) and "failed" in markdown_table(s)


def test_win_rate_ties_and_nan():
    nan = float("nan")
    ref = [2.0, 2.0, 2.0, 2.0, nan, 2.0]
    rl = [1.0, 1.5, 2.0, 3.0, 1.0, nan]  # win, win, tie, loss, dropped, dropped
    recs = [rec("a", i, "CE", v) for i, v in enumerate(ref)] + \
           [rec("a", i, "CE+GRPO", v) for i, v in enumerate(rl)]
    w = dataset_summary(recs)["datasets"]["a"]["win_rate"]
    assert set(w) == {"CE+GRPO"}
    assert w["CE+GRPO"]["win_rate"] == pytest.approx(2.5 / 4)
    assert (w["CE+GRPO"]["n_pairs"], w["CE+GRPO"]["ties"]) == (4, 1)
    # pairs are matched by split id, not by position
    recs2 = [rec("a", 0, "CE", 1.0), rec("a", 1, "CE", 5.0),
             rec("a", 1, "CE+GRPO", 4.0), rec("a", 0, "CE+GRPO", 2.0)]
    assert dataset_summary(recs2)["datasets"]["a"]["win_rate"]["CE+GRPO"]["win_rate"] == 0.5
    # no reference on the dataset: no win rates; rl_methods=None: every other method
    assert dataset_summary([rec("a", 0, "CE+GRPO", 1.0)])["datasets"]["a"]["win_rate"] == {}
    every = dataset_summary(recs2 + [rec("a", 0, "Ridge", 0.5)], rl_methods=None)
    assert set(every["datasets"]["a"]["win_rate"]) == {"CE+GRPO", "Ridge"}


def test_duplicate_runs_raise():
    with pytest.raises(ValueError, match="duplicate"):
        dataset_summary([rec("a", 0, "CE", 1.0), rec("a", 0, "CE", 2.0)])


# --- aggregate -----------------------------------------------------------------------------


def test_normalised_scores():
    out = normalised_scores([rec("a", 0, "CE", 3.0, scale=2.0), rec("a", 1, "CE", float("nan")),
                             rec("a", 2, "CE", 1.0, scale=0.0)])
    assert [r["score"] for r in out] == [1.5, None, None]
    assert out[0] == {"dataset": "a", "split": 0, "method": "CE", "score": 1.5}


def test_iqm_matches_scipy_trim_mean():
    x = np.array([0.1, 5.0, 0.3, 0.9, 0.4, 0.2, 7.0, 0.6, 0.5, 0.8, 0.7, 3.0])
    recs = [rec(f"ds{i % 3}", i // 3, "CE", float(v) * 2, scale=2.0) for i, v in enumerate(x)]
    agg = aggregate_iqm(recs, ["CE"], n_boot=200)
    assert agg["methods"]["CE"]["iqm"] == pytest.approx(stats.trim_mean(x, 0.25))
    assert agg["methods"]["CE"]["iqm"] != pytest.approx(x.mean())  # the data make them differ
    assert agg["methods"]["CE"]["mean"] == pytest.approx(x.mean())
    assert (agg["methods"]["CE"]["n_runs"], agg["methods"]["CE"]["n_datasets"]) == (12, 3)


def test_ci_contains_estimate_and_shrinks_with_more_splits():
    def width(n_splits):
        rng = np.random.default_rng(1)
        recs = [rec(f"ds{d}", s, "CE", float(rng.normal(1.0, 0.2))) for d in range(3) for s in range(n_splits)]
        row = aggregate_iqm(recs, ["CE"], n_boot=1000)["methods"]["CE"]
        for key in ("iqm", "mean"):
            lo, hi = row[f"{key}_ci"]
            assert lo <= row[key] <= hi and lo < hi
        return row["iqm_ci"][1] - row["iqm_ci"][0]

    assert width(40) < 0.6 * width(4)


def test_bootstrap_is_stratified_by_dataset():
    # Within each dataset every split is equal, so a resample of splits inside each dataset always
    # gives {1, 1, 5, 5} (IQM 3); a pooled resample would draw e.g. {1, 1, 1, 5} (IQM 1).
    recs = [rec("a", 0, "CE", 1.0), rec("a", 1, "CE", 1.0), rec("b", 0, "CE", 5.0), rec("b", 1, "CE", 5.0)]
    row = aggregate_iqm(recs, ["CE"], n_boot=500)["methods"]["CE"]
    assert row["iqm"] == pytest.approx(3.0)
    assert row["iqm_ci"] == pytest.approx([3.0, 3.0])
    assert row["mean_ci"] == pytest.approx([3.0, 3.0])


def test_bootstrap_deterministic_and_independent_of_method_list():
    recs = grid(2, 3)
    a = aggregate_iqm(recs, ["CE", "CE+GRPO"], n_boot=300, seed=3)
    b = aggregate_iqm(recs, ["CE+GRPO"], n_boot=300, seed=3)
    c = aggregate_iqm(recs, ["CE+GRPO"], n_boot=300, seed=4)
    assert a["methods"]["CE+GRPO"] == b["methods"]["CE+GRPO"]
    assert c["methods"]["CE+GRPO"]["iqm_ci"] != b["methods"]["CE+GRPO"]["iqm_ci"]


def test_probability_of_improvement():
    # dataset a: RL beats CE on every pair; dataset b: loses on every pair → P = 0.5 over datasets
    recs = [rec("a", s, "CE", 2.0 + s) for s in range(3)] + [rec("a", s, "CE+ReMax", 1.0 + 0.1 * s) for s in range(3)]
    recs += [rec("b", s, "CE", 1.0) for s in range(3)] + [rec("b", s, "CE+ReMax", 2.0) for s in range(3)]
    p = aggregate_iqm(recs, ["CE", "CE+ReMax"], n_boot=200)["prob_improvement"]
    assert set(p) == {"CE+ReMax"}
    assert p["CE+ReMax"]["p"] == pytest.approx(0.5) and p["CE+ReMax"]["n_datasets"] == 2
    assert p["CE+ReMax"]["ci"] == pytest.approx([0.5, 0.5])  # per-dataset P is 1 and 0 in every resample
    # a tie on every pair counts half
    ties = [rec("a", 0, "CE", 1.0), rec("a", 0, "CE+ReMax", 1.0)]
    assert aggregate_iqm(ties, None, n_boot=20)["prob_improvement"]["CE+ReMax"]["p"] == 0.5


# --- curves, text, plots -------------------------------------------------------------------


def test_sampling_curve_summary():
    recs = curves(1, 2) + [{"dataset": "ds0", "split": 2, "method": "CE", "k": 4, "rmse": float("nan")}]
    out = strict_json(sampling_curve_summary(recs))
    ce = out["datasets"]["ds0"]["CE"]
    assert ce["k"] == [1, 4, 16, 64]
    assert ce["mean"] == pytest.approx([1.0 / k + 0.5 + 0.03 for k in (1, 4, 16, 64)])
    assert ce["n"] == [2, 2, 2, 2] and ce["n_failed"] == [0, 1, 0, 0]
    assert list(out["datasets"]["ds0"]) == METHODS


def test_tables_name_every_method_and_are_json():
    recs = grid(2, 3)
    s = strict_json(dataset_summary(recs))
    agg = strict_json(aggregate_iqm(recs, METHODS, n_boot=100))
    text = format_tables(s, agg)
    for m in METHODS:
        assert f"\n{m} " in text  # a table row starts with the method name
    assert "== ds0 ==" in text and "== ds1 ==" in text and "IQM" in text and "P(score < CE)" in text
    md = markdown_table(s).splitlines()
    assert md[0] == "| dataset | " + " | ".join(METHODS) + " |"
    assert len(md) == 4 and md[2].startswith("| ds0 | ") and md[2].count("[") == len(METHODS)
    assert s["methods"] == METHODS


@pytest.mark.parametrize("n_ds,n_splits", [(1, 1), (2, 3)])
def test_plots_write_pngs(tmp_path, n_ds, n_splits):
    recs = grid(n_ds, n_splits)
    paths = [plot_dataset_rmse(dataset_summary(recs), tmp_path / "sub" / "rmse.png"),
             plot_aggregate(aggregate_iqm(recs, METHODS, n_boot=50), tmp_path / "agg.png"),
             plot_sampling_curves(sampling_curve_summary(curves(n_ds, n_splits)), tmp_path / "k.png")]
    for p in paths:
        data = open(p, "rb").read()
        assert data.startswith(PNG) and len(data) > 5000


def test_plots_survive_failed_methods(tmp_path):
    recs = [rec("a", 0, "CE", 1.0), rec("a", 0, "HGB", float("nan"))]
    p = plot_dataset_rmse(dataset_summary(recs), tmp_path / "r.png")
    q = plot_aggregate(aggregate_iqm(recs, None, n_boot=10), tmp_path / "a.png")
    assert open(p, "rb").read().startswith(PNG) and open(q, "rb").read().startswith(PNG)

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
from rlreg.evaluate.calibration import METHOD as CALIBRATION_METHOD

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


# --- the paper preset's definition and the partial-results path (no training) ----------------

def test_paper_preset_definition():
    """The budget issue 15 asks for, checked on the preset itself (it takes hours to run)."""
    from benchmarks.quality.methods import run_config
    from benchmarks.quality.presets import METHODS as PRESET_METHODS, RL_METHODS, get_preset
    from benchmarks.quality.tuning import check_tune_spec, trial_count, tune_config

    preset = get_preset("paper")
    assert preset["methods"] == list(PRESET_METHODS) and len(preset["splits"]) >= 3
    assert len(preset["datasets"]) >= 4 and preset["ks"][-1] == 128
    kin8nm = next(d for d in preset["datasets"] if d["name"] == "uci:kin8nm")
    assert "max_rows" not in kin8nm["data"]  # used whole: 8,192 rows
    assert len({d["name"] for d in preset["datasets"]}) == len(preset["datasets"])
    for method in RL_METHODS:
        cfg = run_config(preset, preset["datasets"][0], 0, method, "/tmp/unused")
        rl = cfg.rl
        assert (rl.batch_size, rl.group_size) == (128, 16)
        assert rl.steps * rl.batch_size * rl.group_size >= 75_000
        assert rl.lr == pytest.approx(1e-5)
        assert cfg.learner.warmup_fraction > 0 and cfg.learner.min_lr_ratio < 1  # warm-up, then cosine
        assert (cfg.model.hidden, cfg.model.layers) == (256, 3)
        assert cfg.eval.samples == 128  # K on val (aggregation and calibration) = K on test
    assert run_config(preset, preset["datasets"][0], 0, "CE+GenRe2", "/tmp/x").rl.expert_ce_coef == 0.05
    # the CE search: sft.* keys only, shared by every LM method through the dataset's "sft" entry
    check_tune_spec(preset["tune"])
    assert trial_count(preset["tune"]) == 6
    tuned = {**preset["datasets"][0], "sft": {"lr": 3e-3, "batch_size": 128}}
    for method in ("CE", "CE+NTL", "CE+ReMax", "CE+GRPO", "CE+GenRe2"):
        sft = run_config(preset, tuned, 1, method, "/tmp/x").sft
        assert (sft.lr, sft.batch_size) == (3e-3, 128)
    tcfg = tune_config(preset, preset["datasets"][0], 0, "/tmp/tune")
    assert tcfg.tune.search == "grid" and set(tcfg.tune.space) == {"sft.lr", "sft.batch_size"}
    assert tcfg.rl.steps == 1 and tcfg.rl.lr <= 1e-8  # the trial's score is the CE model's


def test_paper_fingerprint_covers_its_extra_settings_and_old_presets_keep_theirs():
    import copy

    from benchmarks.quality.presets import get_preset
    from benchmarks.quality.runner import fingerprint

    paper = get_preset("paper")
    changed = copy.deepcopy(paper)
    changed["tune"]["space"]["sft.lr"]["grid"] = [1e-3]
    assert fingerprint(changed) != fingerprint(paper)
    full = get_preset("full")
    import hashlib
    legacy = hashlib.sha256(json.dumps({k: full[k] for k in ("base", "ks")}, sort_keys=True).encode()).hexdigest()[:12]
    assert fingerprint(full) == legacy


def _synthetic_records(path, preset, n_splits_done):
    """A records file as the runner writes it: some (dataset, split) groups done, one run failed and
    later redone, one torn last line, one line of another fingerprint, a CE search row."""
    from benchmarks.quality.runner import Records, fingerprint

    store = Records(path, fingerprint(preset))
    ds = preset["datasets"][0]["name"]
    store.add_tune({"dataset": ds, "split": 0, "chosen": {"lr": 1e-3, "batch_size": 64}, "trials": [], "wall_s": 1.0})
    rng = np.random.default_rng(0)
    for split in range(n_splits_done):
        for i, method in enumerate(preset["methods"]):
            r = rec(ds, split, method, 2.0 - 0.1 * i + 0.05 * rng.random(), scale=4.0)
            r.update(error=None, wall_s=10.0, n_train=250)
            if method.startswith("CE"):
                r.update(coverage90=0.5, width90=1.0, coverage90_calibrated=0.9, width90_calibrated=2.0,
                         calibration_method=CALIBRATION_METHOD)
            if (split, method) == (1, "CE"):  # recorded before the calibration's offset: not averaged
                r.update(coverage90_calibrated=0.2, width90_calibrated=900.0, calibration_method=None)
            if method in ("CE+ReMax", "CE+GRPO", "CE+GenRe2"):
                r["diagnostics"] = {"every": 2, "val_rows": 8, "samples": 4,
                                    "steps": [{"step": s, "reward_mean": -1 + 0.1 * s, "advantage_std": 0.5,
                                               "invalid_rate": 0.0} for s in range(1, 5)],
                                    "probes": [{"step": s, "greedy_rmse": 2 - 0.1 * s, "mean_of_k_rmse": 2.1 - 0.1 * s,
                                                "sampled_rmse": 2.5, "entropy": 1.0 - 0.1 * s} for s in (0, 2, 4)]}
            curve = [{"dataset": ds, "split": split, "method": method, "k": k, "rmse": r["rmse"] + 1 / k}
                     for k in preset["ks"]] if method.startswith("CE") else []
            if split == 0 and method == "CE+GRPO":  # failed first, redone by the next invocation
                store.add({**r, "rmse": float("nan"), "error": "RuntimeError: mid-edit"}, [])
            store.add(r, curve)
    with path.open("a") as f:
        f.write(json.dumps({"fingerprint": "another", "kind": "record", "row": rec(ds, 9, "CE", 0.1)}) + "\n")
        f.write('{"fingerprint": "torn')  # killed mid-write


def test_partial_records_become_an_incomplete_results_file(tmp_path, capsys):
    from benchmarks.quality.presets import get_preset
    from benchmarks.quality.results import finalise, main
    from benchmarks.quality.runner import Records, fingerprint

    preset = get_preset("paper")
    records = tmp_path / "quality_paper.records.jsonl"
    _synthetic_records(records, preset, n_splits_done=2)
    store = Records(records, fingerprint(preset))
    assert len(store.done()) == 2 * len(preset["methods"])  # the redone GRPO run replaced its failure
    out = tmp_path / "results" / "quality_paper.json"
    assert main(["--preset", "paper", "--records", str(records), "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    total = len(preset["datasets"]) * len(preset["splits"]) * len(preset["methods"])
    assert data["complete"] is False and data["runs_total"] == total
    assert data["runs_done"] == 2 * len(preset["methods"]) and len(data["runs_missing"]) == total - data["runs_done"]
    assert data["failed_runs"] == 0 and "INCOMPLETE" in capsys.readouterr().out
    ds = preset["datasets"][0]["name"]
    assert data["summary"]["datasets"][ds]["methods"]["CE"]["n"] == 2
    assert data["coverage"][ds]["CE"]["coverage90_calibrated"] == pytest.approx(0.9)
    assert data["coverage"][ds]["CE"]["n"] == 2 and data["coverage"][ds]["CE"]["n_calibrated"] == 1
    assert data["budget"][ds]["rl_epochs"] == pytest.approx(37 * 128 / 250)
    assert data["budget"][ds]["fraction_of_paper_100_epochs"] == pytest.approx(37 * 128 / 250 / 100)
    assert data["ce_search"][ds]["chosen"] == {"lr": 1e-3, "batch_size": 64}
    assert len(data["rl_diagnostics"]["runs"]) == 6 and all("diagnostics" not in r for r in data["records"])
    summary = data["rl_diagnostics"]["summary"][ds]["CE+ReMax"]
    assert summary["greedy_rmse"]["first"] == pytest.approx(2.0) and summary["greedy_rmse"]["last"] == pytest.approx(1.6)
    names = {p.split("/")[-1] for p in data["plots"]}
    assert {"rmse_by_dataset.png", "aggregate_iqm.png", "rmse_vs_samples.png",
            f"rl_diagnostics_{ds.replace(':', '_')}.png"} <= names
    for p in data["plots"]:
        assert open(p, "rb").read(8) == PNG
    strict_json(data)  # no NaN in the committed file
    with pytest.raises(ValueError, match="no run of preset 'full'"):
        finalise("full", records, tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        finalise("paper", tmp_path / "missing.jsonl", tmp_path / "x.json")


def test_a_run_that_keeps_failing_is_not_retried_forever(tmp_path):
    from benchmarks.quality.runner import MAX_ATTEMPTS, Records

    path = tmp_path / "r.jsonl"
    store = Records(path, "fp", sources="v1")
    bad = {**rec("ds", 0, "CE", float("nan")), "error": "RuntimeError: x", "code": {"rlreg_sources": "v1"}}
    for attempt in range(MAX_ATTEMPTS):
        assert ("ds", 0, "CE") not in Records(path, "fp", "v1").done()  # still retried
        store.add(bad, [])
    assert ("ds", 0, "CE") in Records(path, "fp", "v1").done()
    assert ("ds", 0, "CE") not in Records(path, "fp", "v2").done()  # the code changed: worth another try

"""`rlreg bench quality --preset small`, end to end as a user runs it: real Ray, vLLM engines and
DeepSpeed learners, two datasets (tabular vector input and SQL text with IEEE tokens), all eight
methods. Checks the JSON carries per-run and per-dataset CIs, win rates, the aggregate IQM and the
sampling curves, that the plots exist, and that a second invocation reuses the stored runs."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.quality.presets import METHODS, RL_METHODS, get_preset
from conftest import SHARED_DATA

pytestmark = pytest.mark.engine

SHARED = SHARED_DATA


def _bench(output: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlreg", "bench", "quality", "--preset", "small",
                           "--output", str(output)], capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    if not SHARED.is_dir():
        pytest.fail(f"the quality benchmark reads the shared data at {SHARED}")
    output = tmp_path_factory.mktemp("quality") / "quality_small.json"
    first = _bench(output)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    return output, first, json.loads(output.read_text())


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_quality_small_preset_scores_every_method_with_cis(small_run):
    output, first, data = small_run
    preset = get_preset("small")
    datasets = [d["name"] for d in preset["datasets"]]
    keys = {(r["dataset"], r["split"], r["method"]) for r in data["records"]}
    assert keys == {(d, s, m) for d in datasets for s in preset["splits"] for m in METHODS}
    for record in data["records"]:
        assert record["error"] is None, record
        lo, hi = record["rmse_ci"]
        assert _finite(record["rmse"]) and lo <= record["rmse"] <= hi, record
        assert record["scale"] > 0
    for dataset in datasets:
        for method in METHODS:
            entry = data["summary"]["datasets"][dataset]["methods"][method]
            lo, hi = entry["ci"]
            assert lo <= entry["mean"] <= hi and entry["n"] == len(preset["splits"]), entry
    for method in METHODS:
        agg = data["aggregate"]["methods"][method]
        assert agg["iqm_ci"][0] <= agg["iqm"] <= agg["iqm_ci"][1], agg
    for dataset in datasets:
        for method in RL_METHODS:
            win = data["summary"]["datasets"][dataset]["win_rate"][method]
            assert 0.0 <= win["win_rate"] <= 1.0 and win["n_pairs"] == len(preset["splits"])
    for name in datasets:  # the SQL set is scored on log1p(cardinality), the tabular set in its units
        space = {r["score_space"] for r in data["records"] if r["dataset"] == name}
        assert space == ({"log1p"} if name.startswith("sqlcard") else {"original"})
    assert "CE+GRPO" in first.stdout and "IQM" in first.stdout
    assert data["complete"] is True and data["runs_done"] == data["runs_total"] == len(data["records"])
    for record in data["records"]:  # LM methods: raw and split-conformal calibrated 90 % intervals
        if record["method"].startswith("CE"):
            assert 0.0 <= record["coverage90"] <= 1.0 and 0.0 <= record["coverage90_calibrated"] <= 1.0, record
            assert record["width90_calibrated"] > 0
    assert set(data["coverage"]) == set(datasets)


def test_quality_small_preset_sampling_curves_and_plots(small_run):
    output, _, data = small_run
    ks = get_preset("small")["ks"]
    lm_methods = [m for m in METHODS if m.startswith("CE")]
    rows = data["sampling_curves"]["rows"]
    for method in lm_methods:
        got = sorted(r["k"] for r in rows if r["method"] == method and r["dataset"] == "uci:yacht")
        assert got == ks, (method, got)
    assert all(_finite(r["rmse"]) and r["n_scored"] > 0 for r in rows)
    for plot in data["plots"]:
        assert Path(plot).is_file() and Path(plot).stat().st_size > 1000, plot


def test_quality_rerun_reuses_stored_runs(small_run):
    output, _, data = small_run
    again = _bench(output)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "split 0:" not in again.stdout  # no (dataset, split) had anything left to train
    rerun = json.loads(output.read_text())
    assert [r["rmse"] for r in rerun["records"]] == [r["rmse"] for r in data["records"]]


def test_quality_rl_left_to_do_without_the_ce_model_trains_ce_again(small_run):
    """A sitting on another machine (or a clean clone) has the records but not runs/: an RL run still
    to do must start from a CE model that exists, and the CE it reports must be that model."""
    import shutil

    from benchmarks.quality.runner import records_path

    output, _, data = small_run
    records = records_path(output)
    dropped = ("uci:yacht", 0, "CE+ReMax")
    kept = [line for line in records.read_text().splitlines()
            if tuple(json.loads(line)["row"].get(k) for k in ("dataset", "split", "method")) != dropped]
    records.write_text("\n".join(kept) + "\n")
    shutil.rmtree(output.with_suffix("") / "uci_yacht" / "split0" / "CE")
    again = _bench(output)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "CE model not on this machine; training CE again" in again.stdout
    rerun = {(r["dataset"], r["split"], r["method"]): r for r in json.loads(output.read_text())["records"]}
    assert rerun[dropped]["error"] is None and rerun[("uci:yacht", 0, "CE")]["error"] is None
    assert (output.with_suffix("") / "uci_yacht" / "split0" / "CE").is_dir()
    before = {(r["dataset"], r["split"], r["method"]): r for r in data["records"]}
    assert rerun[("sqlcard:scale", 0, "CE+ReMax")]["rmse"] == before[("sqlcard:scale", 0, "CE+ReMax")]["rmse"]

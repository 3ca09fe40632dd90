"""`rlreg bench`: benchmarks run end to end in smoke mode (--quick: tiny model, 1 repeat) and write
the JSON schema the committed results use. Only benchmarks whose extra dependencies are installed
are selected (TRL for `step` comes with the `bench` extra, not the `test` one), and only the cheap
ones (≈ 25 s here without TRL, ≈ 50 s with it): `sync` starts a DeepSpeed learner and an engine
(≈ 50 s in smoke mode) and `scaling` four RL runners (≈ 90 s), so those two are left to
`rlreg bench sync --quick` / `rlreg bench scaling --quick` by hand."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlreg.commands.bench import BENCHMARKS, missing_requirements
from conftest import REPO

CHEAP = ("learner", "rollout", "step")
SELECTED = [name for name in CHEAP if not missing_requirements(name)]
RESULTS = REPO / "benchmarks" / "results"


def check_schema(data: dict, name: str) -> None:
    assert data["benchmark"] == name
    machine = data["machine"]
    assert machine["cpu_count"] >= 1 and isinstance(machine["cpu_model"], str)
    assert {"torch", "ray", "transformers"} <= set(machine["versions"])
    assert len(data["load_average"]["before"]) == 3 and len(data["load_average"]["after"]) == 3
    assert isinstance(data["config"], dict) and data["config"]
    assert isinstance(data["medians"], dict) and data["medians"]
    assert isinstance(data["raw"], dict) and data["raw"]
    assert isinstance(data["ratio"], float) and data["ratio"] > 0
    assert data["ratio_means"]


@pytest.mark.engine
@pytest.mark.parametrize("name", SELECTED)
def test_benchmark_smoke_run_writes_schema(name, tmp_path, ray_session):
    from rlreg.commands.bench import run_benchmark

    out = run_benchmark(name, output=str(tmp_path / f"{name}.json"), quick=True)
    check_schema(json.loads(Path(out).read_text()), name)


def test_benchmarks_needing_missing_packages_are_the_only_ones_left_out():
    for name in set(CHEAP) - set(SELECTED):
        assert missing_requirements(name), f"{name} was left out although its requirements are installed"


SPEED_RESULTS = sorted(p for p in RESULTS.glob("*.json") if not p.stem.endswith("_quick")
                       and not p.stem.startswith("quality"))


@pytest.mark.parametrize("path", SPEED_RESULTS, ids=lambda p: p.stem)
def test_committed_results_have_the_schema(path):
    check_schema(json.loads(path.read_text()), path.stem)


@pytest.mark.parametrize("path", sorted(RESULTS.glob("quality_*.json")), ids=lambda p: p.stem)
def test_committed_quality_results_carry_cis_for_every_run(path):
    """The quality benchmark's JSON (its own schema: runs and CIs, no speed ratio)."""
    data = json.loads(path.read_text())
    assert data["benchmark"] == "quality" and data["records"]
    for record in data["records"]:
        if record["error"] is None:
            lo, hi = record["rmse_ci"]
            assert lo <= record["rmse"] <= hi, record
    for dataset, entry in data["summary"]["datasets"].items():
        for method, stats in entry["methods"].items():
            assert stats["ci"] is None or stats["ci"][0] <= stats["mean"] <= stats["ci"][1], (dataset, method)
    assert data["aggregate"]["methods"]


def test_cli_lists_benchmarks_and_rejects_unknown():
    ok = subprocess.run([sys.executable, "-m", "rlreg", "bench", "--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and all(name in ok.stdout for name in BENCHMARKS)
    bad = subprocess.run([sys.executable, "-m", "rlreg", "bench", "nosuch"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "nosuch" in bad.stderr

"""The quality benchmark's results file and plots, from the runs done so far — at the end of
`rlreg bench quality`, or at any time from a (partial) records file:

    python -m benchmarks.quality.results --preset paper \\
        --records /work/qpaper/quality_paper.records.jsonl --output benchmarks/results/quality_paper.json

The JSON says whether the preset is complete and how many of its runs are done; every statistic is
over the runs present (a dataset with fewer splits done has a wider CI, one with none is absent)."""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.quality.presets import RL_METHODS, get_preset


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def coverage_summary(records: list[dict]) -> dict:
    """Per dataset and LM method: mean over splits of the test coverage and width of the 90 % sample
    interval, raw and split-conformal calibrated on validation. The calibrated means are over the
    runs calibrated by the current method only (n_calibrated): runs recorded before the score's
    offset existed (no calibration_method) carry the older, spread-only calibration."""
    from rlreg.evaluate.calibration import METHOD

    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        if not r.get("error") and r.get("coverage90") is not None:
            acc[r["dataset"]][r["method"]].append(r)

    def summary(rs: list[dict]) -> dict:
        current = [x for x in rs if x.get("calibration_method") == METHOD]
        return {"n": len(rs), **{k: _mean([x.get(k) for x in rs]) for k in ("coverage90", "width90")},
                "n_calibrated": len(current),
                **{k: _mean([x.get(k) for x in current]) for k in ("coverage90_calibrated", "width90_calibrated")}}

    return {ds: {m: summary(rs) for m, rs in methods.items()} for ds, methods in sorted(acc.items())}


def budget_summary(preset: dict, records: list[dict]) -> dict:
    """Per dataset: train rows, RL completions per run and what they are in epochs over train, as a
    fraction of the paper's 100 epochs."""
    rl = preset["base"]["rl"]
    completions = rl["steps"] * rl["batch_size"] * rl["group_size"]
    out = {}
    for ds in preset["datasets"]:
        rows = [r["n_train"] for r in records if r["dataset"] == ds["name"] and r.get("n_train")]
        if not rows:
            out[ds["name"]] = {"n_train": None, "rl_completions": completions}
            continue
        n_train = float(np.mean(rows))
        epochs = rl["steps"] * rl["batch_size"] / n_train
        out[ds["name"]] = {"n_train": n_train, "rl_completions": completions, "rl_epochs": epochs,
                           "fraction_of_paper_100_epochs": epochs / 100.0}
    return out


def build_payload(preset: dict, records: list[dict], curves: list[dict], tunes: dict | None = None, *,
                  wall_s: float | None = None, load_before: list | None = None) -> dict:
    """The results JSON for the runs given (any subset of the preset's)."""
    from benchmarks.common import load_average, machine_info
    from benchmarks.quality import diagnostics, stats
    from benchmarks.quality.runner import NAME, fingerprint, key

    methods = preset["methods"]
    expected = {(d["name"], s, m) for d in preset["datasets"] for s in preset["splits"] for m in methods}
    ok = [r for r in records if not r.get("error")]
    done = {key(r) for r in ok} & expected
    rl_methods = [m for m in RL_METHODS if m in methods]
    diag_rows = [{k: r[k] for k in ("dataset", "split", "method", "diagnostics")} for r in ok if r.get("diagnostics")]
    config = {"base": preset["base"], "splits": preset["splits"], "ks": preset["ks"], "methods": methods,
              "datasets": preset["datasets"], "fingerprint": fingerprint(preset)}
    config.update({k: preset[k] for k in ("method_overrides", "tune", "diagnostics") if k in preset})
    return {
        "benchmark": NAME, "preset": preset["name"], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": done == expected, "runs_done": len(done), "runs_total": len(expected),
        "runs_missing": sorted([list(k) for k in expected - done]),
        "machine": machine_info(), "load_average": {"before": load_before, "after": load_average()},
        "config": config,
        # the runs, with the RL diagnostics moved to their own section
        "records": [{k: v for k, v in r.items() if k != "diagnostics"} for r in records],
        "summary": stats.dataset_summary(records, reference="CE", rl_methods=rl_methods),
        "aggregate": stats.aggregate_iqm(records, methods, n_boot=2000),
        "sampling_curves": {"rows": curves, "summary": stats.sampling_curve_summary(curves)},
        "coverage": coverage_summary(records), "budget": budget_summary(preset, records),
        "ce_search": tunes or {},
        "rl_diagnostics": {"runs": diag_rows, "summary": diagnostics.summary(diag_rows)},
        "run_wall_s": round(float(sum(r.get("wall_s") or 0.0 for r in ok)), 1),
        "wall_s": None if wall_s is None else round(wall_s, 1),
        "failed_runs": sum(1 for r in records if r.get("error")),
    }


def write_results(data: dict, path: Path) -> Path:
    """Plots beside `path` (<stem>_plots/), then the JSON; prints the tables."""
    from benchmarks.common import write_result
    from benchmarks.quality import diagnostics, stats

    path = Path(path)
    plots = path.with_name(path.stem + "_plots")  # the plot functions create it
    data["plots"] = [stats.plot_dataset_rmse(data["summary"], plots / "rmse_by_dataset.png"),
                     stats.plot_aggregate(data["aggregate"], plots / "aggregate_iqm.png"),
                     stats.plot_sampling_curves(data["sampling_curves"]["summary"], plots / "rmse_vs_samples.png")]
    data["plots"] += diagnostics.plot(data["rl_diagnostics"]["runs"], plots)
    write_result(data, path, quick=False)
    print("\n" + stats.format_tables(data["summary"], data["aggregate"]))
    state = "complete" if data["complete"] else f"INCOMPLETE: {data['runs_done']} of {data['runs_total']} runs done"
    print(f"\nquality ({data['preset']}): {state}; {len(data['records'])} runs recorded, {data['failed_runs']} failed, "
          f"{data['run_wall_s']:.0f} s of runs; wrote {path} and {plots}/")
    return path


def finalise(preset_name: str, records: Path, output: Path) -> Path:
    """Results JSON + plots from the records file as it stands (the preset need not be finished)."""
    from benchmarks.quality.runner import Records, fingerprint

    preset = get_preset(preset_name)
    if not Path(records).is_file():
        raise FileNotFoundError(f"records file {records} does not exist")
    store = Records(Path(records), fingerprint(preset))
    if not store.records:
        raise ValueError(f"{records}: no run of preset {preset_name!r} (fingerprint {fingerprint(preset)}) in it")
    data = build_payload(preset, store.all_records(), store.all_curves(), store.tunes)
    return write_results(data, Path(output))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--records", required=True, type=Path, help="the <output>.records.jsonl of the runs")
    parser.add_argument("--output", required=True, type=Path, help="e.g. benchmarks/results/quality_paper.json")
    args = parser.parse_args(argv)
    finalise(args.preset, args.records, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

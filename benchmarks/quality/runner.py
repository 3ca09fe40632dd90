"""`rlreg bench quality`: test RMSE of every method on every (dataset, split) of a preset, with CIs.

Writes one JSON (records per run, per-dataset means with 95 % CIs, paired win rates of each RL
method over CE, an aggregate IQM of normalised scores with stratified bootstrap CIs, and the
RMSE-vs-K sampling curves), prints the tables and draws the plots beside the JSON.

Nothing is lost: each finished run is appended to `<output>.records.jsonl` at once; running the
same command again skips the runs already there (a crash or a stopped session costs one run)."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from benchmarks.common import load_average, machine_info
from benchmarks.quality.presets import RL_METHODS, get_preset
from rlreg.rundir import ModelFiles, RunDir

NAME = "quality"
REQUIRES: tuple[str, ...] = ()


def _fingerprint(preset: dict) -> str:
    """Identifies the settings a stored run was made with (a changed preset never mixes in)."""
    settings = {k: preset[k] for k in ("base", "ks")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _read_done(path: Path, fingerprint: str) -> tuple[list[dict], list[dict]]:
    records, curves = [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("fingerprint") != fingerprint:
                continue
            (records if row["kind"] == "record" else curves).append(row["row"])
    return records, curves


def _append(path: Path, fingerprint: str, record: dict, curve: list[dict]) -> None:
    """One finished run (its record and its sampling-curve rows), in one write."""
    rows = [("record", record)] + [("curve", row) for row in curve]
    with path.open("a") as f:
        f.writelines(json.dumps({"fingerprint": fingerprint, "kind": kind, "row": row}, default=float) + "\n"
                     for kind, row in rows)


def _key(row: dict) -> tuple:
    return row["dataset"], row["split"], row["method"]


def _print_run(record: dict) -> None:
    rmse, (lo, hi) = record["rmse"], record["rmse_ci"]
    shown = "failed: " + str(record["error"]) if record["error"] else f"{rmse:.4g} [{lo:.4g}, {hi:.4g}]"
    print(f"  {record['dataset']} split {record['split']} {record['method']:<10} test RMSE {shown} "
          f"({record['wall_s']:.0f} s)", flush=True)


def run_preset(preset: dict, output: Path) -> dict:
    """Run (or finish) every (dataset, split, method) of the preset; returns the JSON payload."""
    from benchmarks.quality import stats
    from benchmarks.common import RESULTS_DIR
    from benchmarks.quality.methods import SplitRun, failed_record, run_config
    from rlreg.actors.session import ensure_ray

    started, load_before = time.monotonic(), load_average()
    fingerprint = _fingerprint(preset)
    log = output.with_suffix(".records.jsonl")
    # Models and logs of each run: beside a given output, under runs/ for the committed results
    # folder (they are large and belong to this machine, not to the repository).
    work = (Path("runs") / f"bench-{output.stem}" if output.parent.resolve() == RESULTS_DIR.resolve()
            else output.with_suffix(""))
    records, curves = _read_done(log, fingerprint)
    done = {_key(r) for r in records}
    first = preset["datasets"][0]
    ensure_ray(run_config(preset, first, preset["splits"][0], "CE", work).ray)
    # Splits outermost: a run stopped early still has every dataset at its first split.
    for split in preset["splits"]:
        for dataset in preset["datasets"]:
            todo = [m for m in preset["methods"] if (dataset["name"], split, m) not in done]
            if not todo:
                continue
            print(f"{dataset['name']} split {split}: {', '.join(todo)}", flush=True)
            try:
                run = SplitRun(preset, dataset, split, work / dataset["name"].replace(":", "_") / f"split{split}")
            except Exception as err:  # bad data or settings for this dataset: say so, go on with the others
                for method in todo:
                    record = failed_record(dataset["name"], split, method, err)
                    _print_run(record)
                    records.append(record)
                continue  # not stored: a rerun after fixing the cause retries it
            ce_model = RunDir(run.work_dir / "CE").sft_model
            if "CE" not in todo and (ce_model / ModelFiles.WEIGHTS).is_file():
                run.ce_dir = ce_model  # CE finished in an earlier invocation
            for method in todo:
                record, curve = run.run(method)
                _print_run(record)
                records.append(record)
                curves.extend(curve)
                _append(log, fingerprint, record, curve)
    summary = stats.dataset_summary(records, reference="CE", rl_methods=[m for m in RL_METHODS
                                                                          if m in preset["methods"]])
    aggregate = stats.aggregate_iqm(records, preset["methods"], n_boot=2000)
    curve_summary = stats.sampling_curve_summary(curves)
    return {"benchmark": NAME, "preset": preset["name"], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_info(), "load_average": {"before": load_before, "after": load_average()},
            "config": {"base": preset["base"], "splits": preset["splits"], "ks": preset["ks"],
                       "methods": preset["methods"], "datasets": preset["datasets"], "fingerprint": fingerprint},
            "records": records, "summary": summary, "aggregate": aggregate,
            "sampling_curves": {"rows": curves, "summary": curve_summary},
            "wall_s": round(time.monotonic() - started, 1), "failed_runs": sum(1 for r in records if r["error"])}


def run_quality(preset_name: str, output: str | None, splits: int | None = None,
                datasets: list[str] | None = None, methods: list[str] | None = None) -> Path:
    from benchmarks.quality import stats
    from benchmarks.common import RESULTS_DIR, write_result

    preset = get_preset(preset_name, splits, datasets, methods)
    path = Path(output) if output else RESULTS_DIR / f"quality_{preset_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = run_preset(preset, path)  # every finished run is already in the records log
    plots = path.with_name(path.stem + "_plots")  # the plot functions create it
    data["plots"] = [stats.plot_dataset_rmse(data["summary"], plots / "rmse_by_dataset.png"),
                     stats.plot_aggregate(data["aggregate"], plots / "aggregate_iqm.png"),
                     stats.plot_sampling_curves(data["sampling_curves"]["summary"], plots / "rmse_vs_samples.png")]
    write_result(data, path, quick=False)
    print("\n" + stats.format_tables(data["summary"], data["aggregate"]))
    failed = data["failed_runs"]
    print(f"\nquality ({preset_name}): {len(data['records'])} runs, {failed} failed, "
          f"{data['wall_s']:.0f} s; wrote {path} and {plots}/")
    if failed and all(r["error"] for r in data["records"] if r["method"] == "CE"):
        raise RuntimeError(f"every CE run failed; see the errors in {path}")
    return path


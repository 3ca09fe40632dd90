"""`rlreg eval RUN_DIR`: evaluate a finished run's checkpoint again by sampling, on any split,
with any K — without retraining and without rebuilding the model (the checkpoint's own tokenizer
and saved scaler are used). Writes RUN_DIR/eval_<split>.json and plots; metrics.json is left alone."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence


from rlreg import console
from rlreg.actors.rollout import RolloutGroup
from rlreg.actors.session import ensure_ray
from rlreg.config import load_config
from rlreg.configlib import to_mapping
from rlreg.errors import ConfigError
from rlreg.evaluate.aggregate import aggregate, choose_aggregation
from rlreg.evaluate.calibration import check_alphas, interval_report, prediction_interval
from rlreg.evaluate.metrics import evaluate_samples
from rlreg.evaluate.plots import prediction_plots
from rlreg.evaluate.report import REPORT_COLUMNS, format_table, report_row, write_metrics_json
from rlreg.evaluate.sampling import calibrate, classical_baselines, sample_values
from rlreg.model.checkpoint import require_weights
from rlreg.rundir import RunDir
from rlreg.train.task import SPLITS, prepare_task


def find_run(run_dir: str | Path) -> tuple[RunDir, Path]:
    """(the run, its checkpoint dir); ConfigError naming what is missing."""
    run = RunDir.existing(run_dir)
    checkpoint = run.checkpoint
    if not checkpoint.exists():
        checkpoint = _recorded_checkpoint(run) or checkpoint
    require_weights(checkpoint, str(run))
    return run, checkpoint


def _recorded_checkpoint(run: RunDir) -> Path | None:
    """The model metrics.json says was evaluated: a run with sft.init_from and no training
    evaluates the model it started from, which lives outside the run directory."""
    try:
        recorded = json.loads(run.metrics.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(recorded) if isinstance(recorded, str) and Path(recorded).is_dir() else None


def run_eval(run_dir: str | Path, split: str = "test", samples: int | None = None, baselines: bool = False,
             overrides: Sequence[str] = (), alphas: Sequence[float] | None = None) -> dict:
    """Sample K per input of `split`, aggregate (chosen on val unless eval.aggregation is set),
    calibrate the intervals on val (split conformal, same K), score, plot, write eval_<split>.json,
    print the table; returns the JSON payload. alphas: interval levels besides 0.1."""
    alphas = check_alphas(alphas, "--alpha")
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if baselines and split == "train":
        raise ConfigError("--baselines compares on held-out rows; use --split val or --split test")
    started = time.monotonic()
    run, checkpoint = find_run(run_dir)
    console.use_log_dir(run.logs)
    extra = [f"eval.samples={samples}"] if samples is not None else []
    cfg = load_config(run.config, [*overrides, *extra, f"run_dir={run}"])
    task = prepare_task(cfg, run, model_dir=checkpoint)  # checkpoint given: no model is built
    if len(task.y[split]) == 0:
        raise ConfigError(f"{run}: the {split} split is empty")
    how = cfg.eval.aggregation
    if how == "auto" and len(task.y["val"]) == 0:
        raise ConfigError(f"{run}: no validation rows to choose the aggregation on; "
                          f"set eval.aggregation=mean|median|trimmed_mean")
    # val is drawn whenever it has rows: the calibration needs it even when the aggregation is given
    need = list(dict.fromkeys(["val", split])) if len(task.y["val"]) else [split]
    ensure_ray(cfg.ray)
    rollout = RolloutGroup(checkpoint, cfg.engine, cfg.model.max_positions, cfg.ray)
    try:
        drawn = {s: sample_values(rollout, task, s, cfg.eval.samples, cfg.eval.temperature, cfg.eval.chunk_inputs)
                 for s in need}
    finally:
        rollout.shutdown()
    chosen_on = "config"
    if how == "auto":
        how, chosen_on = choose_aggregation(*drawn["val"], task.y["val"]), "val"
    values, valid = drawn[split]
    calibration = calibrate(*drawn["val"], task.y["val"], how) if "val" in drawn else None
    metrics = evaluate_samples(values, valid, task.y[split], how, task.scaler.to_z, n_boot=cfg.eval.n_boot)
    metrics["intervals"] = interval_report(values, valid, task.y[split], calibration, alphas)
    payload = {"split": split, "dataset": task.dataset.name, "checkpoint": str(checkpoint),
               "samples": cfg.eval.samples, "temperature": cfg.eval.temperature, "aggregation": how,
               "aggregation_chosen_on": chosen_on, "model": metrics, "config": to_mapping(cfg),
               "calibration": None if calibration is None else calibration.to_dict(),
               # on val itself the calibrated coverage is in-sample, ≈ 1 − alpha by construction
               "calibrated_on": None if calibration is None else ("val (in-sample)" if split == "val" else "val")}
    if baselines:
        payload["baselines"] = {name: result[split] for name, result in classical_baselines(task).items()}
    if cfg.eval.plots:
        payload["plots"] = _plots(task, values, valid, how, split, run, cfg.eval.samples, calibration)
    payload["wall_s"] = time.monotonic() - started
    out = write_metrics_json(run.eval_result(split), payload)
    _print(task, payload, split, out)
    return payload


def _plots(task, values, valid, how: str, split: str, run: RunDir, k: int, calibration=None) -> list[str]:
    yhat = aggregate(values, valid, how)
    lo, hi = prediction_interval(values, valid, 0.1, calibration)
    name = task.dataset.name
    return [str(path) for path in prediction_plots(
        task.y[split], yhat, lo, hi, run.plot(f"eval_{split}_parity"), run.plot(f"eval_{split}_residuals"),
        f"{name} {split} ({how} of {k})", f"{name} {split} residuals")]


def _print(task, payload: dict, split: str, out: Path) -> None:
    rows = [report_row(f"model ({payload['aggregation']} of {payload['samples']})", payload["model"])]
    rows += [report_row(name.upper(), metrics) for name, metrics in payload.get("baselines", {}).items()]
    print(f"\n{split} metrics ({task.dataset.name}, {len(task.y[split])} rows, original units; "
          f"aggregation chosen on {payload['aggregation_chosen_on']}):")
    print(format_table(rows, REPORT_COLUMNS))
    lines = []
    for key, r in payload["model"]["intervals"].items():
        cal = r["calibrated"]
        shown = "no calibration" if cal is None else f"calibrated {cal['coverage']:.3f} (width {cal['width']:.4g})"
        lines.append(f"  {r['nominal']:.0%} interval coverage: sample {r['raw']['coverage']:.3f} "
                     f"(width {r['raw']['width']:.4g}), {shown}")
    print("\n".join(lines))
    print(f"\nwritten: {out}")


def run(args: argparse.Namespace) -> int:
    run_eval(args.run_dir, split=args.split, samples=args.samples, baselines=args.baselines,
             overrides=args.overrides, alphas=args.alpha)
    return 0

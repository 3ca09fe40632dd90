"""`rlreg sft` and `rlreg train`: the pipelines of a config, in a local Ray session or a cluster's."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from rlreg.configlib import to_mapping

REPORT_COLUMNS = ["method", "rmse", "mae", "r2", "spearman", "coverage90", "invalid_rate"]


def _report_row(method: str, metrics: dict) -> dict:
    return {"method": method, **{k: metrics.get(k) for k in REPORT_COLUMNS[1:]}}


def evaluate_checkpoint(cfg, task, model_dir: Path, run_dir: Path, label: str) -> dict:
    """Start a rollout worker on model_dir and evaluate it by sampling (val and test)."""
    import ray

    from rlreg.actors.rollout import start_rollout_worker
    from rlreg.evaluate.sampling import evaluate_model

    worker = start_rollout_worker(model_dir, cfg.engine, cfg.model.max_positions, cfg.ray)
    try:
        return evaluate_model(worker, task, cfg.eval, cfg.ray.call_timeout_s, run_dir, label)
    finally:
        ray.kill(worker)


def run_supervised(cfg, command: str = "sft") -> dict:
    """Supervised stage end to end: data → model → SFT → sampled evaluation → metrics.json."""
    from rlreg.actors.session import ensure_ray
    from rlreg.evaluate.report import format_table, write_metrics_json
    from rlreg.evaluate.sampling import classical_baselines
    from rlreg.rundir import make_run_dir
    from rlreg.train.export import atomic_replace_dir
    from rlreg.train.sft import run_sft
    from rlreg.train.task import prepare_task

    started = time.monotonic()
    run_dir = make_run_dir(cfg, command)
    print(f"run dir: {run_dir}")
    init = Path(cfg.sft.init_from) if cfg.sft.init_from else None
    task = prepare_task(cfg, run_dir, model_dir=init)
    print(f"data: {task.dataset.name}: " + ", ".join(f"{k} {len(v)}" for k, v in task.y.items()))
    ensure_ray(cfg.ray)
    checkpoint = run_dir / "checkpoint"
    if cfg.sft.enabled and init is None:
        best = run_sft(cfg, task, run_dir)
        atomic_replace_dir(best, checkpoint)
    else:
        checkpoint = task.model_dir
    metrics = evaluate_checkpoint(cfg, task, checkpoint, run_dir, "sft")
    baselines = classical_baselines(task)
    payload = {"stage": "sft", "dataset": task.dataset.name, "config": to_mapping(cfg),
               "val": metrics["val"], "test": metrics["test"], "baselines": baselines,
               "checkpoint": str(checkpoint), "wall_s": time.monotonic() - started}
    write_metrics_json(run_dir / "metrics.json", payload)
    rows = [_report_row("CE" if cfg.sft.loss == "ce" else cfg.sft.loss.upper(), metrics["test"])]
    rows += [_report_row(name.upper(), result["test"]) for name, result in baselines.items()]
    print(f"\ntest metrics ({task.dataset.name}, {len(task.y['test'])} rows, original units):")
    print(format_table(rows, REPORT_COLUMNS))
    print(f"\ndone in {payload['wall_s']:.0f} s; metrics: {run_dir / 'metrics.json'}")
    return payload


def run_train(cfg) -> dict:
    """Until the RL stage lands, `train` runs the supervised pipeline."""
    return run_supervised(cfg, "train")

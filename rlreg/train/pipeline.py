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
    from rlreg.actors.rollout import RolloutGroup
    from rlreg.evaluate.sampling import evaluate_model

    rollout = RolloutGroup(model_dir, cfg.engine, cfg.model.max_positions, cfg.ray)
    try:
        return evaluate_model(rollout, task, cfg.eval, run_dir, label)
    finally:
        rollout.shutdown()


def _print_report(task, rows: list[dict], run_dir: Path, wall_s: float) -> None:
    from rlreg.evaluate.report import format_table

    print(f"\ntest metrics ({task.dataset.name}, {len(task.y['test'])} rows, original units):")
    print(format_table(rows, REPORT_COLUMNS))
    print(f"\ndone in {wall_s:.0f} s; metrics: {run_dir / 'metrics.json'}")


def _prepare(cfg, command: str, resume: bool = False):
    from rlreg.actors.session import ensure_ray
    from rlreg.rundir import make_run_dir
    from rlreg.train.task import TASK_FILE, prepare_task, require_splits

    run_dir = make_run_dir(cfg, command)
    print(f"run dir: {run_dir}")
    init = Path(cfg.sft.init_from) if cfg.sft.init_from else None
    if resume and init is None and (run_dir / "model" / TASK_FILE).is_file():
        # The run's own built model (task.json is written after it): its prompt tokenizer and
        # fitted scaler are what the saved checkpoints were trained with.
        init = run_dir / "model"
    task = prepare_task(cfg, run_dir, model_dir=init)
    require_splits(task.dataset.name, task.y, cfg.data)  # also for a given model (sft.init_from)
    print(f"data: {task.dataset.name}: " + ", ".join(f"{k} {len(v)}" for k, v in task.y.items()))
    ensure_ray(cfg.ray)
    return run_dir, task


def _supervised_checkpoint(cfg, task, run_dir: Path, name: str) -> Path:
    """Train the supervised stage into run_dir/name, or use the model the task started from."""
    from rlreg.train.export import atomic_replace_dir
    from rlreg.train.sft import run_sft

    if not cfg.sft.enabled or cfg.sft.init_from:
        return task.model_dir
    target = run_dir / name
    if (target / "model.safetensors").is_file():  # resuming: the supervised stage already finished
        return target
    atomic_replace_dir(run_sft(cfg, task, run_dir), target)
    return target


def _method_name(cfg) -> str:
    return "CE" if cfg.sft.loss == "ce" else cfg.sft.loss.upper()


def run_supervised(cfg, command: str = "sft") -> dict:
    """Supervised stage end to end: data → model → SFT → sampled evaluation → metrics.json."""
    from rlreg.evaluate.report import write_metrics_json
    from rlreg.evaluate.sampling import run_baselines

    started = time.monotonic()
    run_dir, task = _prepare(cfg, command)
    checkpoint = _supervised_checkpoint(cfg, task, run_dir, "checkpoint")
    metrics = evaluate_checkpoint(cfg, task, checkpoint, run_dir, "sft")
    baselines = run_baselines(task, cfg)
    payload = {"stage": "sft", "dataset": task.dataset.name, "config": to_mapping(cfg),
               "val": metrics["val"], "test": metrics["test"], "baselines": baselines,
               "checkpoint": str(checkpoint), "wall_s": time.monotonic() - started}
    write_metrics_json(run_dir / "metrics.json", payload)
    rows = [_report_row(_method_name(cfg), metrics["test"])]
    rows += [_report_row(name.upper(), result["test"]) for name, result in baselines.items()]
    _print_report(task, rows, run_dir, payload["wall_s"])
    return payload


def _resume_hint(run_dir: Path) -> str:
    import json

    from rlreg.train.rl import LATEST

    latest = run_dir / "rl_checkpoints" / LATEST
    where = (f"from checkpoint {latest.parent / json.loads(latest.read_text())['tag']}" if latest.is_file()
             else "from the start of RL (no RL checkpoint yet: set rl.checkpoint_every)")
    return f"continue it {where} with: rlreg train CONFIG --resume {run_dir}"


def run_train(cfg, resume: bool = False) -> dict:
    """Supervised stage (or its checkpoint), then RL; metrics.json holds "before" (the supervised
    model) and the final metrics, evaluated the same way by sampling through the same engines."""
    from rlreg.actors.session import ActorFailed
    from rlreg.evaluate.report import write_metrics_json
    from rlreg.evaluate.sampling import evaluate_model, run_baselines
    from rlreg.train.export import atomic_replace_dir
    from rlreg.train.rl import RLRunner, require_rl_resources, train_rl

    if not cfg.rl.enabled:
        return run_supervised(cfg, "train")
    started = time.monotonic()
    run_dir, task = _prepare(cfg, "train", resume)
    require_rl_resources(cfg)  # before the supervised stage: fail in seconds, not after it
    start = _supervised_checkpoint(cfg, task, run_dir, "sft_checkpoint")
    runner = RLRunner(cfg, task, start, run_dir)
    try:
        before = evaluate_model(runner.rollout, task, cfg.eval, run_dir, "before")
        final_dir, _ = train_rl(runner, resume=resume)
        after = evaluate_model(runner.rollout, task, cfg.eval, run_dir, "rl")
    except ActorFailed as err:  # restarts used up: say how to continue
        raise ActorFailed(f"{err}. The run stopped; {_resume_hint(run_dir)}") from err
    finally:
        runner.shutdown()
    checkpoint = run_dir / "checkpoint"
    atomic_replace_dir(final_dir, checkpoint)
    baselines = run_baselines(task, cfg)
    payload = {"stage": "rl", "algorithm": cfg.rl.advantage, "dataset": task.dataset.name,
               "config": to_mapping(cfg), "before": {"val": before["val"], "test": before["test"]},
               "val": after["val"], "test": after["test"], "baselines": baselines,
               "checkpoint": str(checkpoint), "wall_s": time.monotonic() - started}
    write_metrics_json(run_dir / "metrics.json", payload)
    rows = [_report_row(_method_name(cfg), before["test"]),
            _report_row(f"{_method_name(cfg)}+{cfg.rl.advantage.upper()}", after["test"])]
    rows += [_report_row(name.upper(), result["test"]) for name, result in baselines.items()]
    _print_report(task, rows, run_dir, payload["wall_s"])
    return payload

"""The pipelines behind `rlreg sft` and `rlreg train` (and RLRegressor.fit, and the supervised
start of `rlreg tune`): data → model → supervised stage → [RL] → sampled evaluation →
metrics.json, in a local Ray session or a cluster's. They return the metrics payload; the
commands print it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import psutil

from rlreg import console
from rlreg.actors.rollout import RolloutGroup
from rlreg.actors.session import ActorFailed, ensure_ray
from rlreg.configlib import to_mapping
from rlreg.evaluate.report import method_name, write_metrics_json
from rlreg.evaluate.sampling import evaluate_model, run_baselines
from rlreg.io import replace_dir
from rlreg.model.checkpoint import load_checkpoint
from rlreg.rundir import ModelFiles, RLCheckpointFiles, RunDir
from rlreg.train.rl import RLRunner, Timings, require_rl_resources, train_rl
from rlreg.train.sft import run_sft
from rlreg.train.task import Task, prepare_task, require_splits
from rlreg.train.tracking import Tracker, run_plots


def evaluate_checkpoint(cfg, task: Task, model_dir: Path, run: RunDir, label: str) -> dict:
    """Start a rollout worker on model_dir and evaluate it by sampling (val and test)."""
    rollout = RolloutGroup(model_dir, cfg.engine, cfg.model.max_positions, cfg.ray)
    try:
        return evaluate_model(rollout, task, cfg.eval, run.path, label)
    finally:
        rollout.shutdown()


def _prepare(cfg, command: str, resume: bool = False) -> tuple[RunDir, Task]:
    run = RunDir.create(cfg, command)
    console.use_log_dir(run.logs)
    console.say(f"run dir: {run}")
    init = Path(cfg.sft.init_from) if cfg.sft.init_from else None
    if resume and init is None and (run.model / ModelFiles.TASK).is_file():
        # The run's own built model (task.json is written after it): its prompt tokenizer and
        # fitted scaler are what the saved checkpoints were trained with.
        init = run.model
    task = prepare_task(cfg, run, model_dir=init)
    require_splits(task.dataset.name, task.y, cfg.data)  # also for a given model (sft.init_from)
    console.say(f"data: {task.dataset.name}: " + ", ".join(f"{k} {len(v)}" for k, v in task.y.items()))
    ensure_ray(cfg.ray)
    return run, task


def _supervised_checkpoint(cfg, task: Task, run: RunDir, target: Path, tracker: Tracker | None = None) -> Path:
    """Train the supervised stage into `target`, or use the model the task started from."""
    if not cfg.sft.enabled or cfg.sft.init_from:
        return task.model_dir
    if ModelFiles.weight_files(target):  # resuming: the supervised stage already finished
        return target
    replace_dir(run_sft(cfg, task, run, tracker), target)
    return target


def _record_calibration(checkpoint: Path, run: RunDir, metrics: dict) -> None:
    """The run's final model carries its validation calibration (rlreg predict, RLRegressor); a model
    the run only started from (sft.init_from) is not written to."""
    if metrics.get("calibration") is not None and checkpoint == run.checkpoint:
        load_checkpoint(checkpoint).record(calibration=metrics["calibration"])


def _started() -> tuple[float, Timings]:
    """The pipeline's clock, and its stages' timings starting with `startup`: from the process's start
    to here (interpreter, imports, config), which a first run pays most for."""
    timings = Timings()
    timings.seconds["startup"] = max(0.0, time.time() - psutil.Process().create_time())
    return time.monotonic(), timings


def _payload(cfg, task: Task, stage: str, metrics: dict, baselines: dict, checkpoint: Path, started: float,
             timings: Timings, **extra) -> dict:
    return {"stage": stage, "method": method_name(cfg), "dataset": task.dataset.name, "config": to_mapping(cfg),
            **extra, "val": metrics["val"], "test": metrics["test"], "baselines": baselines,
            "checkpoint": str(checkpoint), "test_rows": len(task.y["test"]), "wall_s": time.monotonic() - started,
            "seconds": timings.seconds}


def run_supervised(cfg, command: str = "sft") -> dict:
    """Supervised stage end to end: data → model → SFT → sampled evaluation → metrics.json."""
    started, timed = _started()
    tracker = Tracker(cfg.log)  # a missing tracking package fails here, before any work
    with timed("prepare"):  # data, prompts, the Ray session
        run, task = _prepare(cfg, command)
    with tracker.session(cfg, run):  # the tracked run ends FINISHED, or FAILED if this raises
        with timed("sft"):
            checkpoint = _supervised_checkpoint(cfg, task, run, run.checkpoint, tracker)
        with timed("evaluate"):  # engine start included
            metrics = evaluate_checkpoint(cfg, task, checkpoint, run, "sft")
        _record_calibration(checkpoint, run, metrics)
        with timed("baselines"):
            baselines = run_baselines(task, cfg)
        payload = _payload(cfg, task, "sft", metrics, baselines, checkpoint, started, timed)
        write_metrics_json(run.metrics, payload)
        tracker.log_final(payload, run_plots(run), checkpoint)
    return payload


def resume_hint(run: RunDir) -> str:
    latest = run.rl_checkpoints / RLCheckpointFiles.LATEST
    where = (f"from checkpoint {latest.parent / json.loads(latest.read_text())['tag']}" if latest.is_file()
             else "from the start of RL (no RL checkpoint yet: set rl.checkpoint_every)")
    return f"continue it {where} with: rlreg train CONFIG --resume {run}"


def run_train(cfg, resume: bool = False) -> dict:
    """Supervised stage (or its checkpoint), then RL; metrics.json holds "before" (the supervised
    model) and the final metrics, evaluated the same way by sampling through the same engines."""
    if not cfg.rl.enabled:
        return run_supervised(cfg, "train")
    started, timed = _started()
    tracker = Tracker(cfg.log)  # a missing tracking package fails here, before any work
    with timed("prepare"):  # data, prompts, the Ray session
        run, task = _prepare(cfg, "train", resume)
    require_rl_resources(cfg)  # before the supervised stage: fail in seconds, not after it
    with tracker.session(cfg, run):  # the tracked run ends FINISHED, or FAILED if this raises
        with timed("sft"):
            start = _supervised_checkpoint(cfg, task, run, run.sft_checkpoint, tracker)
        with timed("rl_start"):  # engines, learner group, reward pool
            runner = RLRunner(cfg, task, start, run.path)
        try:
            with timed("evaluate_before"):
                before = evaluate_model(runner.rollout, task, cfg.eval, run.path, "before")
            with timed("rl"):
                final_dir, _ = train_rl(runner, resume=resume, tracker=tracker)
            with timed("evaluate"):
                after = evaluate_model(runner.rollout, task, cfg.eval, run.path, "rl")
        except ActorFailed as err:  # restarts used up: say how to continue
            raise ActorFailed(f"{err}. The run stopped; {resume_hint(run)}") from err
        finally:
            runner.shutdown()
        replace_dir(final_dir, run.checkpoint)
        _record_calibration(run.checkpoint, run, after)
        with timed("baselines"):
            baselines = run_baselines(task, cfg)
        payload = _payload(cfg, task, "rl", after, baselines, run.checkpoint, started, timed,
                           algorithm=cfg.rl.advantage, before={"val": before["val"], "test": before["test"]})
        write_metrics_json(run.metrics, payload)
        tracker.log_final(payload, run_plots(run), run.checkpoint)
    return payload

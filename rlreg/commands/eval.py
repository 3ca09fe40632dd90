"""`rlreg eval RUN_DIR`: evaluate a finished run's checkpoint again by sampling, on any split,
with any K — without retraining and without rebuilding the model (the checkpoint's own tokenizer
and saved scaler are used). Writes RUN_DIR/eval_<split>.json and plots; metrics.json is left alone."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from rlreg.errors import ConfigError

SPLITS = ("train", "val", "test")


def find_run(run_dir: str | Path) -> tuple[Path, Path, Path]:
    """(run_dir, its config.yaml, its checkpoint dir); ConfigError naming what is missing."""
    from rlreg.model.build import META_FILE

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml, not an rlreg run directory")
    checkpoint = run_dir / "checkpoint"
    if not checkpoint.exists():
        checkpoint = _recorded_checkpoint(run_dir) or checkpoint
    if not (checkpoint / META_FILE).is_file() or not (checkpoint / "model.safetensors").is_file():
        raise ConfigError(f"{run_dir}: no finished checkpoint ({checkpoint} needs {META_FILE} and "
                          f"model.safetensors); did the run complete?")
    return run_dir, config, checkpoint


def _recorded_checkpoint(run_dir: Path) -> Path | None:
    """The model metrics.json says was evaluated: a run with sft.init_from and no training
    evaluates the model it started from, which lives outside the run directory."""
    import json

    try:
        recorded = json.loads((run_dir / "metrics.json").read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(recorded) if isinstance(recorded, str) and Path(recorded).is_dir() else None


def run_eval(run_dir: str | Path, split: str = "test", samples: int | None = None, baselines: bool = False,
             overrides: Sequence[str] = ()) -> dict:
    """Sample K per input of `split`, aggregate (chosen on val unless eval.aggregation is set),
    score, plot, write eval_<split>.json, print the table; returns the JSON payload."""
    from rlreg.actors.rollout import RolloutGroup
    from rlreg.actors.session import ensure_ray
    from rlreg.config import load_config
    from rlreg.configlib import to_mapping
    from rlreg.evaluate.aggregate import choose_aggregation
    from rlreg.evaluate.metrics import evaluate_samples
    from rlreg.evaluate.report import write_metrics_json
    from rlreg.evaluate.sampling import sample_values
    from rlreg.train.task import prepare_task

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if baselines and split == "train":
        raise ConfigError("--baselines compares on held-out rows; use --split val or --split test")
    started = time.monotonic()
    run_dir, config, checkpoint = find_run(run_dir)
    extra = [f"eval.samples={samples}"] if samples is not None else []
    cfg = load_config(config, [*overrides, *extra, f"run_dir={run_dir}"])
    task = prepare_task(cfg, run_dir, model_dir=checkpoint)  # checkpoint given: no model is built
    if len(task.y[split]) == 0:
        raise ConfigError(f"{run_dir}: the {split} split is empty")
    how = cfg.eval.aggregation
    if how == "auto" and len(task.y["val"]) == 0:
        raise ConfigError(f"{run_dir}: no validation rows to choose the aggregation on; "
                          f"set eval.aggregation=mean|median|trimmed_mean")
    need = [split] if how != "auto" or split == "val" else ["val", split]
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
    metrics = evaluate_samples(values, valid, task.y[split], how, task.scaler.to_z, n_boot=cfg.eval.n_boot)
    payload = {"split": split, "dataset": task.dataset.name, "checkpoint": str(checkpoint),
               "samples": cfg.eval.samples, "temperature": cfg.eval.temperature, "aggregation": how,
               "aggregation_chosen_on": chosen_on, "model": metrics, "config": to_mapping(cfg)}
    if baselines:
        from rlreg.evaluate.sampling import classical_baselines

        payload["baselines"] = {name: result[split] for name, result in classical_baselines(task).items()}
    if cfg.eval.plots:
        payload["plots"] = _plots(task, values, valid, how, split, run_dir, cfg.eval.samples)
    payload["wall_s"] = time.monotonic() - started
    out = write_metrics_json(run_dir / f"eval_{split}.json", payload)
    _print(task, payload, split, out)
    return payload


def _plots(task, values, valid, how: str, split: str, run_dir: Path, k: int) -> list[str]:
    import numpy as np

    from rlreg.evaluate.aggregate import aggregate, sample_interval
    from rlreg.evaluate.plots import parity_plot, residual_plot

    yhat = aggregate(values, valid, how)
    if not np.isfinite(yhat).any():
        return []  # nothing decoded: the JSON says so (n_no_valid); a plot would be empty
    lo, hi = sample_interval(values, valid, alpha=0.1)
    name = task.dataset.name
    return [str(parity_plot(task.y[split], yhat, run_dir / f"eval_{split}_parity.png",
                            f"{name} {split} ({how} of {k})", lo=lo, hi=hi)),
            str(residual_plot(task.y[split], yhat, run_dir / f"eval_{split}_residuals.png",
                              f"{name} {split} residuals"))]


def _print(task, payload: dict, split: str, out: Path) -> None:
    from rlreg.evaluate.report import format_table
    from rlreg.train.pipeline import REPORT_COLUMNS

    def row(method: str, metrics: dict) -> dict:
        return {"method": method, **{k: metrics.get(k) for k in REPORT_COLUMNS[1:]}}

    rows = [row(f"model ({payload['aggregation']} of {payload['samples']})", payload["model"])]
    rows += [row(name.upper(), metrics) for name, metrics in payload.get("baselines", {}).items()]
    print(f"\n{split} metrics ({task.dataset.name}, {len(task.y[split])} rows, original units; "
          f"aggregation chosen on {payload['aggregation_chosen_on']}):")
    print(format_table(rows, REPORT_COLUMNS))
    print(f"\nwritten: {out}")

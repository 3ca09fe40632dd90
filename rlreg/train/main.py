"""`rlreg train CONFIG`: the whole pipeline of a config, in a local Ray session or a cluster's."""
from __future__ import annotations

import time


def run_train(cfg) -> dict:
    from rlreg.actors.rollout import start_rollout_worker
    from rlreg.actors.session import ensure_ray
    from rlreg.rundir import make_run_dir
    from rlreg.train.preview import format_preview, preview_samples, write_preview
    from rlreg.train.task import prepare_task

    started = time.monotonic()
    run_dir = make_run_dir(cfg, "train")
    print(f"run dir: {run_dir}")
    task = prepare_task(cfg, run_dir)
    print(f"data: {task.dataset.name}: " + ", ".join(f"{k} {len(v)}" for k, v in task.y.items())
          + f"; model: {task.model_dir}")
    ensure_ray(cfg.ray)
    worker = start_rollout_worker(task.model_dir, cfg.engine, cfg.model.max_positions, cfg.ray)
    result = preview_samples(task, worker, cfg, call_timeout_s=cfg.ray.call_timeout_s)
    print(format_preview(result))
    write_preview(result, run_dir)
    print(f"done in {time.monotonic() - started:.1f} s; outputs in {run_dir}")
    return result

"""Run directories: every command writes its outputs under one, with the resolved config."""
from __future__ import annotations

import time
from pathlib import Path


def make_run_dir(cfg, command: str) -> Path:
    """cfg.run_dir if given, else runs/<command>-<timestamp>; created, with config.yaml inside."""
    from rlreg.config import save_config

    run_dir = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir = str(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir

"""Per-step metrics to JSONL (one line a record) and TensorBoard scalars, under the run dir, and to
the run's Tracker (MLflow / W&B) when one is given."""
from __future__ import annotations

import json
import math
from pathlib import Path

from rlreg.rundir import RunDir


class RunLogger:
    """Appends (a log is read back as lines; a line cut short by a crash is dropped on resume)."""

    def __init__(self, run_dir: str | Path, name: str, tracker=None):
        from torch.utils.tensorboard import SummaryWriter  # loads torch: only where a stage runs

        run = RunDir(run_dir)
        self.path = run.log(name)
        self._file = self.path.open("a")
        self._tb = SummaryWriter(log_dir=str(run.tensorboard(name)))
        self._tracker = tracker  # rlreg.train.tracking.Tracker; its owner (the pipeline) ends it

    def log(self, step: int, record: dict, prefix: str = "") -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps({"step": step, **({"split": prefix} if prefix else {}), **clean}) + "\n")
        self._file.flush()
        for key, value in record.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(f"{prefix}/{key}" if prefix else key, value, step)
        if self._tracker is not None:
            self._tracker.log_step(step, record, prefix)

    def close(self) -> None:
        self._file.close()
        self._tb.close()

"""Experiment tracking as options (the `log:` section): MLflow and Weights & Biases, besides the run
directory's own JSONL and TensorBoard logs. A Tracker sends one run to every backend turned on: the
resolved config as params (dotted keys), each step record RunLogger gets (keys prefixed like its
TensorBoard tags), the final metrics of the payload, the plots, the checkpoint path, and the status.

A backend imports its package when created, so leaving the options off needs neither package."""
from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Iterator

from rlreg import console
from rlreg.configlib import to_mapping
from rlreg.errors import ConfigError
from rlreg.evaluate.compare import flatten
from rlreg.rundir import RunDir

EXTRA = "pip install -e '.[tracking]'"
SQLITE = "sqlite:///"


def require(option: str, module: str):
    """`module` for log.<option>=true, or a ConfigError naming the option and the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"log.{option}=true needs the {module} package, which is not installed: "
                          f"{EXTRA} (or turn log.{option} off)") from err


def require_mlflow():
    """mlflow for log.mlflow=true (rlreg's backend or Ray Tune's callback), quiet and without telemetry."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # send nothing the user did not ask for
    mlflow = require("mlflow", "mlflow")
    if not console.verbose():  # "Creating initial MLflow database tables..." and the like
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def mlflow_uri(log, run_dir) -> str:
    """log.mlflow_uri, or the run directory's own SQLite store (absolute: the same from any working dir)."""
    return log.mlflow_uri or f"{SQLITE}{RunDir(run_dir).mlflow_db.resolve()}"


def run_plots(run_dir) -> list[Path]:
    """The PNG files the run wrote (RunDir.plot names them)."""
    run = RunDir(run_dir)
    return sorted(run.path.glob(run.plot("*").name))


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a record (what TensorBoard gets), keyed `prefix/key` like its tags."""
    return {f"{prefix}/{k}" if prefix else k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and math.isfinite(v)}


def final_metrics(payload: dict) -> dict[str, float]:
    """The payload's numbers under their dotted paths in metrics.json (test.rmse, before.val.rmse, ...)."""
    return scalars(flatten({k: v for k, v in payload.items() if k != "config"}))


class MLflowBackend:
    def __init__(self, log):
        require_mlflow()
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self.log, self.client_class, self.Metric, self.Param = log, MlflowClient, Metric, Param

    def start(self, params: dict, run: RunDir) -> None:
        uri = mlflow_uri(self.log, run)
        self.client = self.client_class(tracking_uri=uri)
        name = self.log.mlflow_experiment
        experiment = self.client.get_experiment_by_name(name)
        # A SQLite store keeps its artifacts beside its file (MLflow's default: ./mlruns of the cwd).
        artifacts = str(RunDir(Path(uri[len(SQLITE):]).parent).mlflow_artifacts) if uri.startswith(SQLITE) else None
        experiment_id = (experiment.experiment_id if experiment
                         else self.client.create_experiment(name, artifact_location=artifacts))
        self.run_id = self.client.create_run(experiment_id, run_name=run.path.name).info.run_id
        # MLflow's limits: 100 params a batch, 6000 characters a value
        items = [self.Param(_key(k), str(v)[:6000]) for k, v in params.items()]
        for at in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[at:at + 100])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [self.Metric(_key(k), v, now, step) for k, v in values.items()]
        for at in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[at:at + 1000])

    def log_step(self, step: int, values: dict[str, float], prefix: str) -> None:
        self._metrics(values, step)

    def log_final(self, metrics: dict[str, float], notes: dict[str, str], plots: list[Path]) -> None:
        self._metrics(metrics, 0)
        for key, value in notes.items():
            self.client.set_tag(self.run_id, key, value)
        for plot in plots:
            self.client.log_artifact(self.run_id, str(plot), artifact_path="plots")

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class WandbBackend:
    def __init__(self, log):
        self.log, self.wandb = log, require("wandb", "wandb")

    def start(self, params: dict, run: RunDir) -> None:
        # console="off": W&B would otherwise wrap sys.stdout/stderr (the progress bars' stream)
        settings = self.wandb.Settings(console="off", silent=not console.verbose())
        self.run = self.wandb.init(project=self.log.wandb_project, mode=self.log.wandb_mode, dir=str(run.wandb.parent),
                                   name=run.path.name, config=params, reinit="create_new", settings=settings)
        self.axes: set[str] = set()

    def log_step(self, step: int, values: dict[str, float], prefix: str) -> None:
        # W&B wants one rising step per run; sft and rl each count from the start, so every
        # prefix gets its own step axis (`rl/step`, `train/step`).
        axis = f"{prefix}/step" if prefix else "step"
        if prefix and axis not in self.axes:
            self.axes.add(axis)
            self.run.define_metric(axis)
            self.run.define_metric(f"{prefix}/*", step_metric=axis)
        self.run.log({**values, axis: step})

    def log_final(self, metrics: dict[str, float], notes: dict[str, str], plots: list[Path]) -> None:
        self.run.summary.update({**metrics, **notes})
        if plots:
            self.run.log({f"plots/{p.stem}": self.wandb.Image(str(p)) for p in plots})

    def end(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


# log.<option> -> its backend
BACKENDS = {"mlflow": MLflowBackend, "wandb": WandbBackend}


class Tracker:
    """One run sent to the backends `log` turns on; with none on every call does nothing."""

    def __init__(self, log):
        self.backends = [backend(log) for option, backend in BACKENDS.items() if getattr(log, option)]
        self.started: list = []

    def start(self, cfg, run_dir) -> None:
        params, run = flatten(to_mapping(cfg)), RunDir(run_dir)
        for backend in self.backends:
            backend.start(params, run)
            self.started.append(backend)

    def log_step(self, step: int, record: dict, prefix: str = "") -> None:
        values = scalars(record, prefix)
        for backend in self.started:
            backend.log_step(step, values, prefix)

    def log_final(self, payload: dict, plots: list[Path], checkpoint) -> None:
        notes = {k: v for k, v in payload.items() if isinstance(v, str)}  # stage, method, dataset, ...
        notes["checkpoint"] = str(checkpoint)
        for backend in self.started:
            backend.log_final(final_metrics(payload), notes, list(plots))

    def end(self, status: str = "FINISHED") -> None:
        while self.started:
            self.started.pop().end(status)

    @contextlib.contextmanager
    def session(self, cfg, run_dir) -> Iterator["Tracker"]:
        """start … end: FINISHED, or FAILED when the block raises (that error is the one raised)."""
        try:
            self.start(cfg, run_dir)
            yield self
        except BaseException:
            try:
                self.end("FAILED")
            except Exception as err:  # the run's own error matters more
                console.warn(f"tracking: could not mark the run FAILED: {err}")
            raise
        self.end("FINISHED")


def _key(key: str) -> str:
    """MLflow accepts letters, digits and `_-. /` in names."""
    return re.sub(r"[^\w\-. /]", "_", key)

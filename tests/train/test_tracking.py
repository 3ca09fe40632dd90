"""Experiment tracking (log.mlflow / log.wandb, rlreg.train.tracking), read back from what the real
packages wrote: MLflow through its client on the run's SQLite store, W&B from its offline run file.
Missing packages are ConfigErrors naming the option; `rlreg tune` uses Ray Tune's own callbacks."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from rlreg.config import load_config
from rlreg.errors import ConfigError
from rlreg.rundir import RunDir
from rlreg.train.config import LogConfig
from rlreg.train.tracking import Tracker, mlflow_uri, run_plots

PAYLOAD = {"stage": "rl", "method": "lm", "config": {"rl": {"lr": 1.0}}, "checkpoint": "ignored",
           "val": {"rmse": 0.5, "n": 20}, "test": {"rmse": 0.25, "ci": [0.2, 0.3], "r2": float("nan")},
           "before": {"test": {"rmse": 0.75}}, "wall_s": 12.5}


def _png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return path


def _log_a_run(tracker: Tracker, cfg, run: RunDir) -> None:
    tracker.log_step(0, {"loss": 2.0, "lr": 1e-3, "what": "text", "bad": float("nan")}, "train")
    tracker.log_step(1, {"loss": 1.5}, "train")
    tracker.log_step(1, {"greedy_rmse": 0.7}, "val")
    tracker.log_step(1, {"reward_mean": -0.3}, "rl")  # RL counts from 1 again: its own axis
    tracker.log_final(PAYLOAD, run_plots(run), run.checkpoint)


def _mlflow_run(cfg, run: RunDir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(cfg.log, run))
    experiment = client.get_experiment_by_name(cfg.log.mlflow_experiment)
    (found,) = client.search_runs([experiment.experiment_id])
    return client, found


def test_mlflow_run_holds_config_steps_final_metrics_plot_and_status(tmp_path):
    cfg = load_config(None, ["log.mlflow=true", "rl.lr=3.0e-5", f"run_dir={tmp_path / 'run'}"])
    run = RunDir(cfg.run_dir)
    png = _png(run.plot("rl_parity_test"))
    tracker = Tracker(cfg.log)
    with tracker.session(cfg, run):
        _log_a_run(tracker, cfg, run)

    assert run.mlflow_db.is_file()  # the default store is the run's own SQLite file
    client, found = _mlflow_run(cfg, run)
    run_id = found.info.run_id
    assert found.info.status == "FINISHED"
    assert found.info.run_name == run.path.name
    assert found.data.params["rl.lr"] == "3e-05" and found.data.params["log.mlflow"] == "True"
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")) == [(0, 2.0), (1, 1.5)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/greedy_rmse")] == [(1, 0.7)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "rl/reward_mean")] == [(1, -0.3)]
    metrics = found.data.metrics
    assert {"train/what", "train/bad", "test.r2", "test.ci", "config.rl.lr"}.isdisjoint(metrics)
    assert (metrics["test.rmse"], metrics["val.rmse"], metrics["before.test.rmse"], metrics["wall_s"]) == \
        (0.25, 0.5, 0.75, 12.5)
    tags = found.data.tags
    assert tags["checkpoint"] == str(run.checkpoint) and (tags["stage"], tags["method"]) == ("rl", "lm")
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/rl_parity_test.png"]
    assert list(run.mlflow_artifacts.rglob("rl_parity_test.png"))  # beside the store, not ./mlruns
    copied = client.download_artifacts(run_id, "plots/rl_parity_test.png", str(tmp_path))
    assert Path(copied).read_bytes() == png.read_bytes()


def test_mlflow_run_is_failed_when_the_pipeline_raises(tmp_path):
    cfg = load_config(None, ["log.mlflow=true", f"run_dir={tmp_path / 'run'}"])
    run = RunDir(cfg.run_dir)
    tracker = Tracker(cfg.log)
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.session(cfg, run):
            tracker.log_step(0, {"loss": 2.0}, "train")
            raise RuntimeError("boom")
    client, found = _mlflow_run(cfg, run)
    assert found.info.status == "FAILED"
    assert found.data.metrics == {"train/loss": 2.0}


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file. No public API reads an offline run back, so this reads its
    LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks, each
    with a 7-byte header (CRC32, little-endian length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, block, records, pending, at = path.read_bytes(), 32768, [], b"", 7
    assert data[:4] == b":W&B"
    while at + 7 <= len(data):
        if block - at % block < 7:  # a block's tail too short for a chunk header is padding
            at += block - at % block
            continue
        length, kind = int.from_bytes(data[at + 4:at + 6], "little"), data[at + 6]
        pending += data[at + 7:at + 7 + length]
        at += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def test_wandb_offline_run_is_written_under_the_run_dir(tmp_path, monkeypatch):
    elsewhere = tmp_path / "wandb_home"  # nothing of W&B's may land outside tmp_path
    for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": elsewhere,
                       "WANDB_CACHE_DIR": elsewhere / "cache", "WANDB_CONFIG_DIR": elsewhere / "config",
                       "WANDB_DATA_DIR": elsewhere / "data"}.items():
        monkeypatch.setenv(var, str(value))
    cfg = load_config(None, ["log.wandb=true", "rl.lr=3.0e-5", f"run_dir={tmp_path / 'run'}"])
    run = RunDir(cfg.run_dir)
    _png(run.plot("rl_parity_test"))
    tracker = Tracker(cfg.log)
    with tracker.session(cfg, run):
        _log_a_run(tracker, cfg, run)

    (folder,) = run.wandb.glob("offline-run-*")
    (log_file,) = folder.glob("run-*.wandb")
    assert log_file.stat().st_size > 0
    images = list((folder / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == 1 and images[0].stat().st_size > 0
    records = _wandb_records(log_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    history = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["train/step"], h["train/loss"]) for h in history if "train/loss" in h] == [(0, 2.0), (1, 1.5)]
    assert [(h["rl/step"], h["rl/reward_mean"]) for h in history if "rl/reward_mean" in h] == [(1, -0.3)]
    summary: dict = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update(_items(record.summary.update))
    assert (summary["test.rmse"], summary["before.test.rmse"], summary["checkpoint"]) == \
        (0.25, 0.75, str(run.checkpoint))
    config: dict = {}
    for record in records:
        config.update(_items(record.run.config.update if record.HasField("run") else record.config.update))
    assert config["rl.lr"] == 3e-5
    (exit_record,) = [r for r, kind in zip(records, kinds) if kind == "exit"]
    assert exit_record.exit.exit_code == 0
    assert not list(elsewhere.rglob("offline-run-*"))  # the run dir wins over WANDB_DIR


@pytest.mark.parametrize("option", ["mlflow", "wandb"])
def test_option_on_without_its_package_names_option_and_extra(option, monkeypatch):
    monkeypatch.setitem(sys.modules, option, None)  # `import mlflow` now raises ImportError
    with pytest.raises(ConfigError, match=rf"log\.{option}=true needs the {option} package.*"
                                          rf"pip install -e '\.\[tracking\]'"):
        Tracker(LogConfig(**{option: True}))


def test_options_off_need_neither_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    tracker = Tracker(cfg.log)
    with tracker.session(cfg, tmp_path):
        tracker.log_step(0, {"loss": 1.0}, "train")
        tracker.log_final(PAYLOAD, [], tmp_path)
    assert tracker.backends == [] and list(tmp_path.iterdir()) == []


def test_log_section_is_checked():
    with pytest.raises(ConfigError, match="log.wandb_mode must be one of offline, online"):
        load_config(None, ["log.wandb_mode=shared"])
    with pytest.raises(ConfigError, match="unknown config key 'log.mlflow_url'"):
        load_config(None, ["log.mlflow_url=x"])


def test_tune_builds_ray_tune_callbacks(tmp_path, monkeypatch):
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.air.integrations.wandb import WandbLoggerCallback

    from rlreg.tune.sweep import _tracking_callbacks

    monkeypatch.setenv("WANDB_MODE", "online")  # restored afterwards; offline in the config wins
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))  # no login to find
    cfg = load_config(None, ["log.mlflow=true", "log.wandb=true", "log.wandb_project=p", f"run_dir={tmp_path}"])
    mlflow_cb, wandb_cb = _tracking_callbacks(cfg, tmp_path)
    assert isinstance(mlflow_cb, MLflowLoggerCallback) and isinstance(wandb_cb, WandbLoggerCallback)
    assert (mlflow_cb.tracking_uri, mlflow_cb.experiment_name) == (f"sqlite:///{tmp_path.resolve()}/mlflow.db", "rlreg")
    assert (wandb_cb.project, wandb_cb.kwargs) == ("p", {"mode": "offline", "dir": str(tmp_path)})
    wandb_cb.setup()  # offline: Ray's callback must not ask for an API key
    assert _tracking_callbacks(load_config(None, []), tmp_path) == []
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"log\.mlflow=true"):
        _tracking_callbacks(cfg, tmp_path)


@pytest.mark.engine
def test_supervised_pipeline_is_tracked_in_mlflow(tiny_cfg, ray_session, tmp_path):
    from rlreg.train.pipeline import run_supervised

    cfg = copy.deepcopy(tiny_cfg)
    cfg.run_dir = str(tmp_path / "run")
    cfg.sft.steps, cfg.sft.eval_every, cfg.eval.samples, cfg.log.mlflow = 10, 5, 2, True
    payload = run_supervised(cfg, "sft")

    run = RunDir(cfg.run_dir)
    written = json.loads(run.metrics.read_text())
    client, found = _mlflow_run(cfg, run)
    run_id = found.info.run_id
    assert found.info.status == "FINISHED"
    assert found.data.params["sft.steps"] == "10"
    logged = [json.loads(line) for line in run.log("sft").read_text().splitlines()]
    train_losses = [(e["step"], e["loss"]) for e in logged if e["split"] == "train"]
    assert len(train_losses) == 10
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")) == train_losses
    assert sorted(m.step for m in client.get_metric_history(run_id, "val/greedy_rmse")) == [4, 9]
    assert found.data.metrics["test.rmse"] == written["test"]["rmse"]
    assert found.data.metrics["val.rmse"] == written["val"]["rmse"]
    assert found.data.tags["checkpoint"] == payload["checkpoint"] == written["checkpoint"]
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {f"plots/{p.name}" for p in run_plots(run)} and "plots/sft_parity_test.png" in plots


@pytest.mark.engine
def test_tune_trials_are_tracked_by_the_mlflow_callback(ray_session, tmp_path):
    """Ray Tune's MLflowLoggerCallback with mlflow-skinny and the tune run's SQLite store: one run
    a trial, with its swept params and reported metrics (a trivial trainable: the wiring is the test)."""
    from ray import tune

    from rlreg.tune.sweep import _tracking_callbacks

    cfg = load_config(None, ["log.mlflow=true", f"run_dir={tmp_path}"])

    def trainable(params):
        for step in (1, 2):
            tune.report({"val_rmse": params["rl.lr"] * step, "rl_step": step})

    tune.Tuner(trainable, param_space={"rl.lr": tune.grid_search([0.5, 0.25])},
               run_config=tune.RunConfig(storage_path=str(tmp_path), name="ray_tune", verbose=0,
                                         callbacks=_tracking_callbacks(cfg, tmp_path))).fit()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri(cfg.log, tmp_path))
    runs = client.search_runs([client.get_experiment_by_name("rlreg").experiment_id])
    by_lr = {r.data.params["rl.lr"]: r for r in runs}
    assert sorted(by_lr) == ["0.25", "0.5"] and all(r.info.status == "FINISHED" for r in runs)
    history = client.get_metric_history(by_lr["0.5"].info.run_id, "val_rmse")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 1.0)]

"""Every file name rlreg reads or writes: a run directory (RunDir), the model directories inside
it (ModelFiles) and the RL checkpoints (RLCheckpointFiles). No other module spells these names."""
from __future__ import annotations

import time
from pathlib import Path

from rlreg.configlib import write_yaml
from rlreg.errors import ConfigError


class ModelFiles:
    """A model directory: HF files that transformers and vLLM load, plus rlreg's own metadata."""

    META = "rlreg_meta.json"  # number format, token ids (rlreg.model.build.ModelMeta)
    TASK = "task.json"  # fitted scaler, data settings, fitted tabular preprocessing
    WEIGHTS = "model.safetensors"
    WEIGHTS_INDEX = "model.safetensors.index.json"  # a sharded checkpoint's tensor → file map
    HF_CONFIG = "config.json"
    TOKENIZER = "tokenizer.json"
    # In a subfolder: vLLM loads every *.safetensors at the top of a model directory.
    ENCODER_WEIGHTS = "feature_encoder/weights.safetensors"
    ENCODER_SPEC = "feature_encoder/spec.json"
    # Written by the learner, so not copied from the directory a run started from.
    # The index too: a copied index would name shards the learner did not write, and vLLM picks
    # the weight files to load from the index when there is one.
    LEARNER_OUTPUTS = (WEIGHTS, WEIGHTS_INDEX, HF_CONFIG, "generation_config.json")

    @classmethod
    def weight_files(cls, model_dir: str | Path) -> list[Path]:
        """The safetensors files of a model directory: the shards its index names, or the single
        file; [] when the weights are not (all) there."""
        model_dir = Path(model_dir)
        index = model_dir / cls.WEIGHTS_INDEX
        if index.is_file():
            import json

            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as err:
                raise ConfigError(f"{index}: not a safetensors index ({err})") from err
            paths = [model_dir / name for name in shards]
            return paths if paths and all(p.is_file() for p in paths) else []
        single = model_dir / cls.WEIGHTS
        return [single] if single.is_file() else []


class RLCheckpointFiles:
    LATEST = "latest.json"  # names the newest complete RL checkpoint; written last, atomically
    ROLLOUT_RNG = "rollout_rng.json"  # the engines' sampler RNG states, inside a checkpoint's tag dir

    @staticmethod
    def tag(step: int) -> str:
        return f"step{step:06d}"


class RunDir:
    """One run's directory: the resolved config, the models, logs, metrics and plots."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, cfg, command: str) -> "RunDir":
        """cfg.run_dir if given, else runs/<command>-<timestamp>; created, with config.yaml inside."""
        path = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
        path.mkdir(parents=True, exist_ok=True)
        cfg.run_dir = str(path)
        run = cls(path)
        write_yaml(cfg, run.config)
        return run

    @classmethod
    def existing(cls, path: str | Path, what: str = "") -> "RunDir":
        """An rlreg run directory that must already exist; ConfigError naming what is missing."""
        run = cls(path)
        where = f"{what} {path}" if what else f"run directory {path}"
        if not run.path.is_dir():
            raise ConfigError(f"{where} does not exist")
        if not run.config.is_file():
            raise ConfigError(f"{where}: no {run.config.name} there (not an rlreg run directory)")
        return run

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # what every command writes
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    def log(self, stage: str) -> Path:
        return self.path / f"{stage}_log.jsonl"

    @property
    def logs(self) -> Path:
        """What the engines, learner ranks and reward actors print (rlreg.console)."""
        return self.path / "logs"

    @property
    def mlflow_db(self) -> Path:
        """log.mlflow's default tracking store (sqlite:///RUN_DIR/mlflow.db)."""
        return self.path / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        """Artifacts of the runs in a SQLite store beside it (MLflow's default: ./mlruns of the cwd)."""
        return self.path / "mlartifacts"

    @property
    def wandb(self) -> Path:
        """log.wandb's files: wandb.init(dir=RUN_DIR) writes them into RUN_DIR/wandb."""
        return self.path / "wandb"

    def tensorboard(self, stage: str) -> Path:
        return self.path / "tensorboard" / stage

    def plot(self, name: str) -> Path:
        return self.path / f"{name}.png"

    def eval_result(self, split: str) -> Path:
        return self.path / f"eval_{split}.json"

    # models
    @property
    def model(self) -> Path:
        """The model built for the run (random weights, its tokenizer, the fitted scaler)."""
        return self.path / "model"

    @property
    def sft_model(self) -> Path:
        """The supervised stage's best model so far (replaced whenever validation improves)."""
        return self.path / "sft_model"

    @property
    def sft_checkpoint(self) -> Path:
        """`rlreg train`: the supervised stage's final model, where RL starts."""
        return self.path / "sft_checkpoint"

    @property
    def rl_model(self) -> Path:
        return self.path / "rl_model"

    @property
    def rl_checkpoints(self) -> Path:
        return self.path / "rl_checkpoints"

    @property
    def checkpoint(self) -> Path:
        """The run's final model: what `rlreg eval` and `rlreg predict` read."""
        return self.path / "checkpoint"

    # rlreg tune
    @property
    def trials(self) -> Path:
        return self.path / "trials"

    @property
    def ray_tune(self) -> Path:
        return self.path / "ray_tune"

    @property
    def tune_results(self) -> Path:
        return self.path / "results.csv"

    @property
    def tune_best(self) -> Path:
        return self.path / "best.yaml"

    @property
    def tune_summary(self) -> Path:
        return self.path / "tune_summary.json"

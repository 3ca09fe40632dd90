"""A model directory rlreg wrote (a checkpoint) and the one loader every reader uses — training
resumed or started from `sft.init_from`, `rlreg eval`, `rlreg predict` and RLRegressor.

Beside the HF files it holds rlreg_meta.json (number format, token ids) and task.json (fitted
target scaler, data settings, fitted tabular preprocessing, sampling temperature and, once
chosen, the aggregation). Nothing here imports torch."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlreg.configlib import from_mapping
from rlreg.data.config import DataConfig
from rlreg.data.preprocess import TabularPreprocessing
from rlreg.errors import ConfigError
from rlreg.io import write_json
from rlreg.model.build import ModelMeta, encoder_spec
from rlreg.model.prompts import PromptCodec
from rlreg.numbers.base import NumberTokenizer
from rlreg.numbers.registry import build_number_tokenizer
from rlreg.numbers.scalers import TargetScaler, decoded_to_original, scaler_from_state_dict
from rlreg.rundir import ModelFiles

TEXT_COLUMN = "text"  # the input column of one-text checkpoints (sqlcard); jsonl ones take their fields


@dataclass
class Checkpoint:
    model_dir: Path
    meta: ModelMeta
    info: dict  # task.json
    scaler: TargetScaler  # fitted on the train targets
    number_tokenizer: NumberTokenizer
    codec: PromptCodec

    @property
    def data_cfg(self) -> DataConfig:
        return from_mapping(DataConfig, self.info["data"], prefix="data.")

    @property
    def kind(self) -> str:
        return self.info.get("kind", "tabular")

    @property
    def text_fields(self) -> list[str] | None:
        """The text fields a multi-field text source (jsonl) trained on; None for other sources."""
        fields = self.info.get("text_fields")
        return None if fields is None else list(fields)

    @property
    def input_columns(self) -> list[str]:
        if self.kind == "text":
            return self.text_fields or [TEXT_COLUMN]
        return list(self.info["source_columns"])

    @property
    def preprocessing(self) -> TabularPreprocessing:
        return TabularPreprocessing.from_info(self.info, self.data_cfg.missing)

    @property
    def feature_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) the vector-input encoder standardises with; None for text input."""
        spec = encoder_spec(self.model_dir)
        return None if spec is None else (np.asarray(spec["mean"]), np.asarray(spec["std"]))

    @property
    def allowed_hf(self) -> list[list[int]]:
        """Per answer position, the HF ids the number format allows there."""
        return self.codec.allowed_hf_ids(self.number_tokenizer.allowed)

    def decode(self, hf_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HF ids [..., L] → values in original units and a validity mask (NaN where invalid)."""
        shape = hf_ids.shape[:-1]
        rows = np.asarray([self.codec.to_number_ids(r) for r in hf_ids.reshape(-1, hf_ids.shape[-1])])
        values, valid = decoded_to_original(self.scaler, *self.number_tokenizer.decode_many(rows))
        return values.reshape(shape), valid.reshape(shape)

    def hf_tokens(self, number_ids: np.ndarray) -> np.ndarray:
        return self.codec.number_ids[number_ids]

    def record(self, **keys: Any) -> None:
        """Add keys to task.json (e.g. the aggregation validation chose)."""
        self.info.update(keys)
        write_json(self.model_dir / ModelFiles.TASK, self.info)


def read_task_info(model_dir: Path) -> dict:
    path = model_dir / ModelFiles.TASK
    if not path.is_file():
        raise ConfigError(f"{model_dir} is not an rlreg checkpoint: no {ModelFiles.TASK} there")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def load_checkpoint(model_dir: str | Path, expected_scaler: str | None = None) -> Checkpoint:
    """Read a checkpoint directory; ConfigError naming what is missing or inconsistent.
    `expected_scaler` (a config's numbers.scaler) must match the saved one: a different scaler
    would silently change what the model's number tokens mean."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"checkpoint {model_dir}: not a directory")
    if not (model_dir / ModelFiles.META).is_file():
        nested = model_dir / "checkpoint" / ModelFiles.META
        hint = f" (did you mean {nested.parent}?)" if nested.is_file() else ""
        if not hint and (model_dir / ModelFiles.HF_CONFIG).is_file():
            hint = " (a Hugging Face checkpoint: start from it with model.pretrained)"
        raise ConfigError(f"checkpoint {model_dir}: no {ModelFiles.META}, not an rlreg model directory{hint}")
    info = read_task_info(model_dir)
    task_file = model_dir / ModelFiles.TASK
    if "data" not in info:
        raise ConfigError(f"{task_file} has no 'data' entry: the checkpoint predates this rlreg and does not "
                          f"record how to render new rows; retrain it")
    if info.get("scaler") is None:
        raise ConfigError(f"{task_file} holds no fitted scaler: cannot turn number tokens into values")
    scaler = scaler_from_state_dict(info["scaler"])
    if expected_scaler is not None and scaler.name != expected_scaler:
        raise ConfigError(f"numbers.scaler={expected_scaler!r} but {task_file} holds the "
                          f"{scaler.name!r} scaler the model was trained with")
    meta = ModelMeta.load(model_dir)
    return Checkpoint(model_dir=model_dir, meta=meta, info=info, scaler=scaler,
                      number_tokenizer=build_number_tokenizer(meta.number_tokenizer), codec=PromptCodec(model_dir))


def require_weights(model_dir: Path, what: str) -> None:
    """A finished model has its weights; a crashed run may have left only the metadata."""
    if not (model_dir / ModelFiles.META).is_file() or not ModelFiles.weight_files(model_dir):
        raise ConfigError(f"{what}: no finished checkpoint ({model_dir} needs {ModelFiles.META} and "
                          f"{ModelFiles.WEIGHTS} or the shards {ModelFiles.WEIGHTS_INDEX} names); did the run complete?")


def copy_model_extras(src: str | Path, dst: str | Path) -> None:
    """Weights come from the learner; tokenizer, rlreg metadata and the fitted scaler are copied from
    the directory the run started from, so every saved model is complete."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and path.name not in ModelFiles.LEARNER_OUTPUTS and not path.name.endswith(".safetensors"):
            shutil.copy2(path, dst / path.name)
        elif path.is_dir() and not (dst / path.name).exists():
            # e.g. feature_encoder/: the learner writes the trained encoder there itself
            shutil.copytree(path, dst / path.name)

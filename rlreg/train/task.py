"""A task: a dataset made ready for the model — scaled targets, their number tokens, prompt ids —
and a built model directory. Everything later (supervised stage, RL, evaluation) starts here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlreg.errors import DataError

SPLITS = ("train", "val", "test")
TASK_FILE = "task.json"  # scaler state + dataset identity, next to the model files


@dataclass
class Task:
    dataset: object  # rlreg.data.Dataset
    scaler: object  # rlreg.numbers.scalers.TargetScaler, fitted on train targets
    number_tokenizer: object  # rlreg.numbers.base.NumberTokenizer
    model_dir: Path
    codec: object  # rlreg.model.prompts.PromptCodec
    prompts: dict[str, list[list[int]]]
    y: dict[str, np.ndarray]  # original units
    target_tokens: dict[str, np.ndarray]  # int [n, L] number-token indices of the scaled targets

    @property
    def allowed_hf(self) -> list[list[int]]:
        return self.codec.allowed_hf_ids(self.number_tokenizer.allowed)

    def decode(self, hf_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HF ids [..., L] → values in original units and a validity mask (NaN where invalid)."""
        shape = hf_ids.shape[:-1]
        rows = np.asarray([self.codec.to_number_ids(r) for r in hf_ids.reshape(-1, hf_ids.shape[-1])])
        scaled, valid = self.number_tokenizer.decode_many(rows)
        values = np.full(scaled.shape, np.nan)
        values[valid] = self.scaler.inverse_transform(scaled[valid])
        return values.reshape(shape), valid.reshape(shape)

    def hf_tokens(self, number_ids: np.ndarray) -> np.ndarray:
        return self.codec.number_ids[number_ids]


def encode_targets(number_tokenizer, scaled: np.ndarray, where: str) -> np.ndarray:
    rows = []
    for i, value in enumerate(scaled):
        try:
            rows.append(number_tokenizer.encode_ids(float(value)))
        except (DataError, ValueError) as err:
            raise DataError(f"{where} row {i}: target {value!r} (after scaling) cannot be written by the "
                            f"{number_tokenizer.name} number tokenizer: {err}") from err
    return np.asarray(rows, dtype=np.int64).reshape(len(scaled), number_tokenizer.length)


def prepare_task(cfg, run_dir: Path, model_dir: Path | None = None) -> Task:
    """Load data, fit the scaler on train targets, encode targets, build (or reuse) the model."""
    from rlreg.data import load_dataset
    from rlreg.data.render import prompt_corpus, render_prompts
    from rlreg.model.build import build_model_dir
    from rlreg.model.prompts import PromptCodec
    from rlreg.numbers.registry import build_number_tokenizer
    from rlreg.numbers.scalers import build_scaler

    dataset = load_dataset(cfg.data)
    number_tokenizer = build_number_tokenizer(cfg.numbers)
    splits = {name: getattr(dataset.splits, name) for name in SPLITS}
    scaler = build_scaler(cfg.numbers.scaler, cfg.numbers.scaler_margin).fit(dataset.y[splits["train"]])
    y = {name: dataset.y[idx] for name, idx in splits.items()}
    target_tokens = {name: encode_targets(number_tokenizer, scaler.transform(y[name]), f"{dataset.name} {name}")
                     for name in SPLITS}
    if model_dir is None:
        model_dir = Path(run_dir) / "model"
        build_model_dir(model_dir, cfg.model, number_tokenizer, prompt_corpus(dataset, cfg.data))
        Path(model_dir, TASK_FILE).write_text(json.dumps({"scaler": scaler.state_dict(),
                                                          "dataset": dataset.name}, indent=1))
    codec = PromptCodec(model_dir)
    prompts = {name: codec.encode(render_prompts(dataset, idx, cfg.data)) for name, idx in splits.items()}
    return Task(dataset=dataset, scaler=scaler, number_tokenizer=number_tokenizer, model_dir=Path(model_dir),
                codec=codec, prompts=prompts, y=y, target_tokens=target_tokens)

"""A task: a dataset made ready for the model — scaled targets, their number tokens, prompt ids —
and a built model directory. Everything later (supervised stage, RL, evaluation) starts here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlreg.errors import DataError
from rlreg.numbers.scalers import decoded_to_original

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
    features: dict[str, np.ndarray] | None = None  # vector input: standardised float32 [n, f]

    def inputs(self, split: str, rows=None) -> dict:
        """What a model reads for these rows: prompt ids, plus feature vectors for vector input."""
        rows = np.arange(len(self.prompts[split])) if rows is None else np.asarray(rows)
        out: dict = {"prompts": [self.prompts[split][i] for i in rows]}
        if self.features is not None:
            out["features"] = self.features[split][rows]
        return out

    @property
    def allowed_hf(self) -> list[list[int]]:
        return self.codec.allowed_hf_ids(self.number_tokenizer.allowed)

    def decode(self, hf_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """HF ids [..., L] → values in original units and a validity mask (NaN where invalid)."""
        shape = hf_ids.shape[:-1]
        rows = np.asarray([self.codec.to_number_ids(r) for r in hf_ids.reshape(-1, hf_ids.shape[-1])])
        values, valid = decoded_to_original(self.scaler, *self.number_tokenizer.decode_many(rows))
        return values.reshape(shape), valid.reshape(shape)

    def hf_tokens(self, number_ids: np.ndarray) -> np.ndarray:
        return self.codec.number_ids[number_ids]


# What to change when a target falls outside what a number format can write.
RANGE_HINTS = {
    "normalized": "it writes values in [0, 1]: set numbers.scaler to zscore_minmax, quantile or signed_log "
                  "(identity leaves the targets as they are)",
    "ieee": "raise numbers.exponent_digits (E digits write exponents up to 10^E - 1)",
    "p10": "widen numbers.min_exponent / numbers.max_exponent",
}


def encode_targets(number_tokenizer, scaled: np.ndarray, where: str, original: np.ndarray | None = None,
                   scaler: str = "") -> np.ndarray:
    rows = []
    for i, value in enumerate(scaled):
        try:
            rows.append(number_tokenizer.encode_ids(float(value)))
        except (DataError, ValueError) as err:
            name = number_tokenizer.name
            shown = f"target {float(value):g}" if original is None else \
                f"target {float(original[i]):g} ({float(value):g} after numbers.scaler={scaler or '?'})"
            raise DataError(f"{where} row {i}: {shown} cannot be written by numbers.tokenizer={name} ({err}); "
                            f"{RANGE_HINTS.get(name, 'change the numbers.* settings')}") from err
    return np.asarray(rows, dtype=np.int64).reshape(len(scaled), number_tokenizer.length)


def read_task_file(model_dir: str | Path) -> dict:
    """model_dir/task.json as a dict; ConfigError naming the file when it is absent or unreadable."""
    from rlreg.errors import ConfigError

    path = Path(model_dir, TASK_FILE)
    if not path.is_file():
        raise ConfigError(f"{model_dir} is not an rlreg checkpoint: no {TASK_FILE} there")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def saved_scaler(model_dir: str | Path, expected: str | None = None):
    """The fitted scaler saved in model_dir/task.json (None when the directory holds none).
    `expected` (the config's numbers.scaler) must match: a different scaler would silently
    change what the model's number tokens mean."""
    from rlreg.errors import ConfigError
    from rlreg.numbers.scalers import scaler_from_state_dict

    if not Path(model_dir, TASK_FILE).is_file():
        return None
    state = read_task_file(model_dir).get("scaler")
    if state is None:
        return None
    scaler = scaler_from_state_dict(state)
    if expected is not None and scaler.name != expected:
        raise ConfigError(f"numbers.scaler={expected!r} but {Path(model_dir, TASK_FILE)} holds the "
                          f"{scaler.name!r} scaler the model was trained with")
    return scaler


def checkpoint_info(cfg, dataset) -> dict:
    """What reading new rows needs (rlreg predict), saved in task.json beside the scaler: how
    prompts are rendered, which columns are features, the categorical codes, missing-value fills."""
    from rlreg.configlib import to_mapping

    info = {"data": to_mapping(cfg.data), "kind": dataset.kind, "target": dataset.target_name,
            "source_columns": list(dataset.source_columns), "feature_names": list(dataset.feature_names),
            "categorical": {k: list(v) for k, v in dataset.categorical.items()},
            "categorical_encoding": dataset.categorical_encoding, "temperature": cfg.eval.temperature}
    if cfg.eval.aggregation != "auto":
        info["aggregation"] = cfg.eval.aggregation
    if dataset.kind == "tabular" and cfg.data.missing == "mean":
        # The values training imputed with (train mean / train mode), so prediction fills alike.
        train = dataset.features[dataset.splits.train]
        fill, j = {}, 0
        for col in dataset.source_columns:
            cats = dataset.categorical.get(col)
            if cats is None:
                fill[col], j = float(train[:, j].mean()), j + 1
            elif dataset.categorical_encoding == "onehot":
                fill[col], j = cats[int(train[:, j:j + len(cats)].sum(axis=0).argmax())], j + len(cats)
            else:
                fill[col], j = cats[int(np.bincount(train[:, j].astype(np.int64)).argmax())], j + 1
        info["fill"] = fill
    return info


def record_task_info(model_dir: str | Path, **keys) -> None:
    """Add keys to model_dir/task.json (e.g. aggregation="median" once validation chose it)."""
    from rlreg.evaluate.report import write_metrics_json

    write_metrics_json(Path(model_dir, TASK_FILE), {**read_task_file(model_dir), **keys})


def require_splits(name: str, y: dict, data_cfg) -> None:
    """Training selects on val and reports on test: each of train, val and test needs rows."""
    empty = [split for split in SPLITS if len(y[split]) == 0]
    if empty:
        sizes = ", ".join(f"{split} {len(y[split])}" for split in SPLITS)
        raise DataError(f"{name}: the {' and '.join(empty)} split(s) are empty ({sizes}); training "
                        f"needs rows in each: use more rows (data.max_rows) or set data.val_fraction / "
                        f"data.test_fraction above 0 (now {data_cfg.val_fraction} / {data_cfg.test_fraction})")


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
    # A given model keeps the scaler it was trained with: its number tokens mean that scaling.
    scaler = saved_scaler(model_dir, cfg.numbers.scaler) if model_dir is not None else None
    if scaler is None:
        scaler = build_scaler(cfg.numbers.scaler, cfg.numbers.scaler_margin).fit(dataset.y[splits["train"]])
    y = {name: dataset.y[idx] for name, idx in splits.items()}
    if model_dir is None:  # a new model is for training: check before building it
        require_splits(dataset.name, y, cfg.data)
    target_tokens = {name: encode_targets(number_tokenizer, scaler.transform(y[name]), f"{dataset.name} {name}",
                                          y[name], scaler.name) for name in SPLITS}
    reused = model_dir is not None
    if model_dir is None:
        model_dir = Path(run_dir) / "model"
        build_model_dir(model_dir, cfg.model, number_tokenizer, prompt_corpus(dataset, cfg.data))
        Path(model_dir, TASK_FILE).write_text(json.dumps({"scaler": scaler.state_dict(), "dataset": dataset.name,
                                                          **checkpoint_info(cfg, dataset)}, indent=1))
    features = None
    if cfg.data.input == "vector":
        features = vector_inputs(cfg, dataset, splits, Path(model_dir), build=not reused)
    codec = PromptCodec(model_dir)
    if features is None:
        prompts = {name: codec.encode(render_prompts(dataset, idx, cfg.data)) for name, idx in splits.items()}
    else:
        prompts = {name: [codec.vector_prompt()] * len(idx) for name, idx in splits.items()}
    return Task(dataset=dataset, scaler=scaler, number_tokenizer=number_tokenizer, model_dir=Path(model_dir),
                codec=codec, prompts=prompts, y=y, target_tokens=target_tokens, features=features)


def vector_inputs(cfg, dataset, splits: dict, model_dir: Path, build: bool) -> dict[str, np.ndarray]:
    """Standardised feature vectors (train statistics, stored with the encoder so prediction
    standardises new rows the same way); builds the MLP encoder into a new model directory."""
    from rlreg.data.render import FeatureStats, feature_matrix, fit_feature_stats
    from rlreg.model.encoder import build_encoder, encoder_spec, save_encoder_stats

    if build:
        stats = fit_feature_stats(dataset)
        build_encoder(model_dir, dataset.features.shape[1], cfg.model.hidden, cfg.model.soft_tokens,
                      cfg.model.encoder_hidden, cfg.model.seed)
        save_encoder_stats(model_dir, stats.mean, stats.std)
    spec = encoder_spec(model_dir)
    if spec is None:
        raise DataError(f"data.input=vector but {model_dir} has no feature encoder (it was built for text input)")
    stats = FeatureStats(mean=np.asarray(spec["mean"]), std=np.asarray(spec["std"]))
    return {name: feature_matrix(dataset, idx, stats) for name, idx in splits.items()}

"""A task: a dataset made ready for the model — scaled targets, their number tokens, prompt ids —
on a checkpoint (a built or given model directory). Everything later (supervised stage, RL,
evaluation, prediction) starts here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlreg.configlib import to_mapping
from rlreg.data import Dataset, load_dataset
from rlreg.data.jsonl import field_text
from rlreg.data.preprocess import TabularPreprocessing
from rlreg.data.render import FeatureStats, column_values, feature_matrix, fit_feature_stats, prompt_corpus, \
    render_prompts
from rlreg.data.rows import Rows, is_missing
from rlreg.data.splits import Splits
from rlreg.errors import ConfigError, DataError
from rlreg.io import read_json, write_json
from rlreg.model.build import build_model_dir
from rlreg.model.checkpoint import TEXT_COLUMN, Checkpoint, load_checkpoint
from rlreg.model.pretrained import adopt_pretrained
from rlreg.numbers.registry import build_number_tokenizer
from rlreg.numbers.scalers import build_scaler
from rlreg.rundir import ModelFiles, RunDir

SPLITS = ("train", "val", "test")
PREDICT = "predict"  # the split that holds new rows (task_for_rows)


@dataclass
class Task:
    checkpoint: Checkpoint  # the model directory: tokenizer, number format, fitted scaler
    dataset: Dataset
    prompts: dict[str, list[list[int]]]
    y: dict[str, np.ndarray]  # original units
    target_tokens: dict[str, np.ndarray]  # int [n, L] number-token indices of the scaled targets
    features: dict[str, np.ndarray] | None = None  # vector input: standardised float32 [n, f]

    @property
    def model_dir(self) -> Path:
        return self.checkpoint.model_dir

    @property
    def scaler(self):
        return self.checkpoint.scaler

    @property
    def number_tokenizer(self):
        return self.checkpoint.number_tokenizer

    @property
    def codec(self):
        return self.checkpoint.codec

    @property
    def allowed_hf(self) -> list[list[int]]:
        return self.checkpoint.allowed_hf

    def decode(self, hf_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.checkpoint.decode(hf_ids)

    def hf_tokens(self, number_ids: np.ndarray) -> np.ndarray:
        return self.checkpoint.hf_tokens(number_ids)

    def inputs(self, split: str, rows=None) -> dict:
        """What a model reads for these rows: prompt ids, plus feature vectors for vector input."""
        rows = np.arange(len(self.prompts[split])) if rows is None else np.asarray(rows)
        out: dict = {"prompts": [self.prompts[split][i] for i in rows]}
        if self.features is not None:
            out["features"] = self.features[split][rows]
        return out

    @property
    def column_names(self) -> list[str]:
        """The names `columns` returns."""
        if self.dataset.text_fields is not None:
            return list(self.dataset.text_fields)
        return [TEXT_COLUMN] if self.dataset.kind == "text" else list(self.dataset.source_columns)

    def columns(self, split: str, rows=None) -> dict[str, np.ndarray]:
        """The rows' data columns by name (what a custom reward function receives as keywords):
        each source feature column (numbers, or category strings), each text field (jsonl), or
        `text` for one-text sources."""
        idx = self.dataset.splits[split] if split in SPLITS else np.arange(len(self.dataset))
        idx = idx if rows is None else idx[np.asarray(rows)]
        if self.dataset.text_fields is not None:
            return {name: np.asarray([values[i] for i in idx], dtype=object)
                    for name, values in self.dataset.text_fields.items()}
        if self.dataset.kind == "text":
            return {TEXT_COLUMN: np.asarray([self.dataset.texts[i] for i in idx], dtype=object)}
        return {name: np.asarray(values) for name, values in column_values(self.dataset, idx)}


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


def task_info(cfg, dataset: Dataset, scaler) -> dict:
    """task.json of a new model: the fitted scaler, and what reading new rows needs (rlreg predict):
    how prompts are rendered and the fitted tabular preprocessing (columns, categories, fills)."""
    info = {"scaler": scaler.state_dict(), "dataset": dataset.name, "data": to_mapping(cfg.data),
            "kind": dataset.kind, "target": dataset.target_name, "feature_names": list(dataset.feature_names),
            "temperature": cfg.eval.temperature,
            **TabularPreprocessing.of(dataset, cfg.data.missing).to_info()}
    if dataset.text_fields is not None:
        info["text_fields"] = list(dataset.text_fields)  # new rows must bring these (input_columns)
    if cfg.eval.aggregation != "auto":
        info["aggregation"] = cfg.eval.aggregation
    return info


def require_splits(name: str, y: dict, data_cfg) -> None:
    """Training selects on val and reports on test: each of train, val and test needs rows."""
    empty = [split for split in SPLITS if len(y[split]) == 0]
    if empty:
        sizes = ", ".join(f"{split} {len(y[split])}" for split in SPLITS)
        raise DataError(f"{name}: the {' and '.join(empty)} split(s) are empty ({sizes}); training "
                        f"needs rows in each: use more rows (data.max_rows) or set data.val_fraction / "
                        f"data.test_fraction above 0 (now {data_cfg.val_fraction} / {data_cfg.test_fraction})")


def prepare_task(cfg, run_dir: RunDir | Path, model_dir: Path | None = None) -> Task:
    """Load data, fit the scaler on train targets (or take the given model's), encode targets,
    build the model into the run directory unless `model_dir` names one to use."""
    dataset = load_dataset(cfg.data)
    splits = {name: dataset.splits[name] for name in SPLITS}
    y = {name: dataset.y[idx] for name, idx in splits.items()}
    if model_dir is None:
        require_splits(dataset.name, y, cfg.data)  # a new model is for training: check before building it
        model_dir = RunDir(run_dir).model
        scaler = build_scaler(cfg.numbers.scaler, cfg.numbers.scaler_margin).fit(y["train"])
        number_tokenizer = build_number_tokenizer(cfg.numbers)
        _encode_all(number_tokenizer, scaler, dataset, y)  # check before building the model
        if cfg.model.pretrained:
            if cfg.data.input == "vector" and cfg.numbers.surface == "text":
                raise ConfigError("data.input=vector with model.pretrained needs numbers.surface=atomic: the "
                                  "feature encoder's soft tokens take the place of an added <feat> token")
            adopt_pretrained(model_dir, cfg.model, number_tokenizer, cfg.numbers.surface)
        else:
            if cfg.numbers.surface != "atomic":
                raise ConfigError("numbers.surface=text needs model.pretrained: a model built from scratch has "
                                  "no digit tokens of its own to write numbers with")
            build_model_dir(model_dir, cfg.model, number_tokenizer, prompt_corpus(dataset, cfg.data))
        if cfg.data.input == "vector":
            _build_encoder(cfg, dataset, Path(model_dir))
        write_json(Path(model_dir, ModelFiles.TASK), task_info(cfg, dataset, scaler))
    # A given model keeps the scaler it was trained with: its number tokens mean that scaling.
    checkpoint = load_checkpoint(model_dir, expected_scaler=cfg.numbers.scaler)
    target_tokens = _encode_all(checkpoint.number_tokenizer, checkpoint.scaler, dataset, y)
    prompts, features = _model_inputs(checkpoint, dataset, splits, cfg.data)
    return Task(checkpoint=checkpoint, dataset=dataset, prompts=prompts, y=y, target_tokens=target_tokens,
                features=features)


def _encode_all(number_tokenizer, scaler, dataset: Dataset, y: dict) -> dict[str, np.ndarray]:
    return {name: encode_targets(number_tokenizer, scaler.transform(y[name]), f"{dataset.name} {name}", y[name],
                                 scaler.name) for name in SPLITS}


def _build_encoder(cfg, dataset: Dataset, model_dir: Path) -> None:
    """The MLP encoder of vector input, with the train statistics it standardises with (stored
    with it, so prediction standardises new rows the same way)."""
    from rlreg.model.encoder import build_encoder, save_encoder_stats  # torch: only for vector input

    stats = fit_feature_stats(dataset)
    hidden = read_json(model_dir / ModelFiles.HF_CONFIG)["hidden_size"]  # a pretrained model's own width
    build_encoder(model_dir, dataset.features.shape[1], hidden, cfg.model.soft_tokens,
                  cfg.model.encoder_hidden, cfg.model.seed)
    save_encoder_stats(model_dir, stats.mean, stats.std)


def _model_inputs(checkpoint: Checkpoint, dataset: Dataset, splits: dict[str, np.ndarray],
                  data_cfg) -> tuple[dict[str, list[list[int]]], dict[str, np.ndarray] | None]:
    """(prompt ids, feature vectors or None) per split, as the model reads its rows: text prompts, or
    for vector input placeholder prompts plus features standardised with the encoder's train stats."""
    if data_cfg.input != "vector":
        return {name: checkpoint.codec.encode(render_prompts(dataset, idx, data_cfg), data_cfg.chat_template)
                for name, idx in splits.items()}, None
    stats = checkpoint.feature_stats
    if stats is None:
        raise DataError(f"data.input=vector but {checkpoint.model_dir} has no feature encoder (it was built "
                        f"for text input)")
    features = {name: feature_matrix(dataset, idx, FeatureStats(*stats)) for name, idx in splits.items()}
    return {name: [checkpoint.codec.vector_prompt()] * len(idx) for name, idx in splits.items()}, features


def task_for_rows(checkpoint: Checkpoint, rows: Rows) -> Task:
    """A Task whose split PREDICT holds new rows as the model reads them: text prompts rendered as
    in training, or standardised feature vectors (vector input, train statistics)."""
    missing = rows.missing_columns(checkpoint.input_columns)
    if missing:
        raise DataError(f"{rows.label}: missing input column(s) {', '.join(map(repr, missing))}; the "
                        f"checkpoint expects: {', '.join(checkpoint.input_columns)}")
    dataset = _rows_dataset(checkpoint, rows)
    prompts, features = _model_inputs(checkpoint, dataset, {PREDICT: np.arange(len(rows.values))}, checkpoint.data_cfg)
    return Task(checkpoint=checkpoint, dataset=dataset, prompts=prompts, y={}, target_tokens={}, features=features)


def _rows_dataset(checkpoint: Checkpoint, rows: Rows) -> Dataset:
    """A Dataset of the rows (targets unknown): what render_prompts reads."""
    n = len(rows.values)
    everything = Splits(train=np.arange(n), val=np.empty(0, np.int64), test=np.empty(0, np.int64))
    common = dict(name=f"{checkpoint.info.get('dataset', 'checkpoint')} (new rows)", y=np.zeros(n),
                  target_name=checkpoint.info.get("target", "y"), splits=everything, source=rows.label)
    if checkpoint.text_fields is not None:
        fmt = checkpoint.data_cfg.float_format  # numbers in JSONL rows are written as training wrote them
        fields = {name: _texts(rows, name, fmt) for name in checkpoint.text_fields}
        return Dataset(kind="text", features=None, feature_names=[], texts=None, text_fields=fields, **common)
    if checkpoint.kind == "text":
        return Dataset(kind="text", features=None, feature_names=[], texts=_texts(rows), **common)
    prep = checkpoint.preprocessing
    features, names = prep.encode(rows)
    return Dataset(kind="tabular", features=features, feature_names=names, texts=None,
                   source_columns=prep.columns, categorical=prep.categorical,
                   categorical_encoding=prep.encoding, **common)


def _texts(rows: Rows, column: str = TEXT_COLUMN, float_format: str | None = None) -> list[str]:
    """One column of the rows as text. The one-text column (float_format None) must hold text. A jsonl
    text field (float_format given) is read as the loader read it (field_text): strings as they are,
    even "" (an empty response is a response), numbers written with float_format; null is missing."""
    out = []
    for row, where in zip(rows.values, rows.where):
        value = row.get(column)
        if float_format is None:
            if is_missing(value) or not isinstance(value, str):
                raise DataError(f"{rows.label}, {where}, column {column!r}: expected text, got {value!r}")
            out.append(value)
            continue
        text = field_text(value, float_format, f"{rows.label}, {where}, column {column!r}")
        if text is None:
            raise DataError(f"{rows.label}, {where}, column {column!r}: missing value; the model needs every "
                            f"text field")
        out.append(text)
    return out

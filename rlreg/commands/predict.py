"""`rlreg predict`: a checkpoint directory + new rows (CSV or JSONL) → predictions with intervals.

A checkpoint carries everything needed to read new rows (rlreg_meta.json: the number tokenizer;
task.json: the fitted scaler, the data settings, feature columns and categorical codes), so new
rows are rendered by the very function that rendered the training prompts, and K constrained
samples per row are drawn through a RolloutGroup and aggregated as in evaluation."""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rlreg.errors import ConfigError, DataError

PREDICTION_COLUMNS = ("prediction", "lower", "upper", "samples_valid")
PREDICT = "predict"  # the Task split that holds the rows to predict
TEXT_COLUMN = "text"  # the input column of text-source checkpoints (e.g. sqlcard)
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
MISSING_MARKS = ("", "?", "nan", "NaN", "NA", "N/A")  # "?" is the UCI mark training read as missing
# Dotted overrides predict takes: where and how to sample, never what the model was trained on.
OVERRIDE_SECTIONS = ("engine.", "ray.", "eval.chunk_inputs")


@dataclass
class Rows:
    """Rows read from a file: column names in first-seen order, raw values, where each row was."""

    columns: list[str]
    values: list[dict[str, Any]]
    where: list[str]  # "line 5" per row, for messages
    label: str  # the file, for messages


@dataclass
class Checkpoint:
    """A loaded checkpoint directory, ready to turn rows into prompts and samples into values."""

    model_dir: Path
    info: dict  # task.json
    data_cfg: Any  # rlreg.data.DataConfig used in training
    task: Any  # rlreg.train.task.Task with no data: decode(), allowed_hf, codec

    @property
    def kind(self) -> str:
        return self.info.get("kind", "tabular")

    @property
    def input_columns(self) -> list[str]:
        return [TEXT_COLUMN] if self.kind == "text" else list(self.info["source_columns"])

    def dataset(self, rows: Rows):
        """A Dataset of the rows (targets unknown): what render_prompts reads."""
        from rlreg.data.dataset import Dataset
        from rlreg.data.splits import Splits

        check_columns(self, rows)
        n = len(rows.values)
        everything = Splits(train=np.arange(n), val=np.empty(0, np.int64), test=np.empty(0, np.int64))
        common = dict(name=f"{self.info.get('dataset', 'checkpoint')} (new rows)", y=np.zeros(n),
                      target_name=self.info.get("target", "y"), splits=everything, source=rows.label)
        if self.kind == "text":
            return Dataset(kind="text", features=None, feature_names=[], texts=_texts(rows), **common)
        features, names = _encode_features(self, rows)
        return Dataset(kind="tabular", features=features, feature_names=names, texts=None,
                       source_columns=list(self.info["source_columns"]),
                       categorical=dict(self.info.get("categorical", {})),
                       categorical_encoding=self.info.get("categorical_encoding", "onehot"), **common)

    def task_for(self, rows: Rows):
        """A Task whose split PREDICT holds the rows as the model reads them: text prompts rendered
        as in training, or standardised feature vectors (vector input, train statistics)."""
        from dataclasses import replace

        from rlreg.data.render import FeatureStats, feature_matrix, render_prompts
        from rlreg.model.encoder import encoder_spec

        dataset, every = self.dataset(rows), np.arange(len(rows.values))
        codec = self.task.codec
        if self.data_cfg.input == "vector":
            spec = encoder_spec(self.model_dir)
            if spec is None:
                raise ConfigError(f"checkpoint {self.model_dir}: data.input=vector but no feature encoder there")
            stats = FeatureStats(mean=np.asarray(spec["mean"]), std=np.asarray(spec["std"]))
            return replace(self.task, dataset=dataset, prompts={PREDICT: [codec.vector_prompt()] * len(every)},
                           features={PREDICT: feature_matrix(dataset, every, stats)})
        prompts = codec.encode(render_prompts(dataset, every, self.data_cfg))
        return replace(self.task, dataset=dataset, prompts={PREDICT: prompts})


def load_checkpoint(model_dir: str | Path) -> Checkpoint:
    """Read a checkpoint directory; ConfigError naming what is missing."""
    from rlreg.configlib import from_mapping
    from rlreg.data.config import DataConfig
    from rlreg.model.build import META_FILE, ModelMeta
    from rlreg.model.prompts import PromptCodec
    from rlreg.numbers.registry import build_number_tokenizer
    from rlreg.train.task import TASK_FILE, Task, read_task_file, saved_scaler

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"checkpoint {model_dir}: not a directory")
    if not (model_dir / META_FILE).is_file():
        hint = f" (did you mean {model_dir / 'checkpoint'}?)" if (model_dir / "checkpoint" / META_FILE).is_file() else ""
        raise ConfigError(f"checkpoint {model_dir}: no {META_FILE}, not an rlreg model directory{hint}")
    info = read_task_file(model_dir)
    if "data" not in info:
        raise ConfigError(f"{model_dir / TASK_FILE} has no 'data' entry: the checkpoint predates rlreg predict "
                          f"and does not record how to render new rows; retrain it")
    data_cfg = from_mapping(DataConfig, info["data"], prefix="data.")
    scaler = saved_scaler(model_dir)
    if scaler is None:
        raise ConfigError(f"{model_dir / TASK_FILE} holds no fitted scaler: cannot turn number tokens into values")
    meta = ModelMeta.load(model_dir)
    task = Task(dataset=None, scaler=scaler, number_tokenizer=build_number_tokenizer(meta.number_tokenizer),
                model_dir=model_dir, codec=PromptCodec(model_dir), prompts={}, y={}, target_tokens={})
    return Checkpoint(model_dir=model_dir, info=info, data_cfg=data_cfg, task=task)


# --- reading rows ---

def read_rows(path: str | Path) -> Rows:
    """CSV (header row) or JSONL (one object a line), by extension; values kept as written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + JSONL_SUFFIXES:
        raise ConfigError(f"--input {path}: unknown file type {suffix or '(none)'!r}; use "
                          f"{', '.join(CSV_SUFFIXES + JSONL_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"--input {path}: file not found")
    try:
        rows = _read_jsonl(path) if suffix in JSONL_SUFFIXES else _read_csv(path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from err
    if not rows.values:
        raise DataError(f"{path}: no data rows")
    return rows


def _read_csv(path: Path) -> Rows:
    with path.open(newline="", encoding="utf-8-sig") as stream:  # -sig: a BOM is not part of the name
        reader = csv.reader(stream)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file (no header row)")
        columns = [c.strip() for c in header]
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise DataError(f"{path}: column(s) {', '.join(map(repr, duplicated))} appear more than once")
        values, where = [], []
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue  # blank line
            if len(fields) > len(columns):
                raise DataError(f"{path}, line {reader.line_num}: {len(fields)} fields but the header has "
                                f"{len(columns)}")
            values.append(dict(zip(columns, fields)))  # short rows: the absent cells are missing
            where.append(f"line {reader.line_num}")
    return Rows(columns=columns, values=values, where=where, label=str(path))


def _read_jsonl(path: Path) -> Rows:
    columns: dict[str, None] = {}  # ordered set
    values, where = [], []
    with path.open(encoding="utf-8-sig") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise DataError(f"{path}, line {number}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            columns.update(dict.fromkeys(row))
            values.append(row)
            where.append(f"line {number}")
    return Rows(columns=list(columns), values=values, where=where, label=str(path))


def rows_from_arrays(X: np.ndarray, names: Sequence[str], label: str = "X") -> Rows:
    """Numeric array rows named like the training columns (the estimator's predict)."""
    X = np.asarray(X, dtype=np.float64)
    values = [dict(zip(names, row)) for row in X.tolist()]
    return Rows(columns=list(names), values=values, where=[f"row {i}" for i in range(len(X))], label=label)


def check_columns(checkpoint: Checkpoint, rows: Rows) -> None:
    expected = checkpoint.input_columns
    missing = [c for c in expected if c not in rows.columns]
    if missing:
        raise DataError(f"{rows.label}: missing input column(s) {', '.join(map(repr, missing))}; the "
                        f"checkpoint expects: {', '.join(expected)}")


def passthrough_columns(checkpoint: Checkpoint, rows: Rows) -> list[str]:
    extra = [c for c in rows.columns if c not in checkpoint.input_columns]
    clash = [c for c in extra if c in PREDICTION_COLUMNS]
    if clash:
        raise DataError(f"{rows.label}: column(s) {', '.join(map(repr, clash))} would be overwritten by the "
                        f"output columns {', '.join(PREDICTION_COLUMNS)}; rename them")
    return extra


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip() in MISSING_MARKS


def _texts(rows: Rows) -> list[str]:
    out = []
    for row, where in zip(rows.values, rows.where):
        value = row.get(TEXT_COLUMN)
        if _is_missing(value) or not isinstance(value, str):
            raise DataError(f"{rows.label}, {where}, column {TEXT_COLUMN!r}: expected text, got {value!r}")
        out.append(value)
    return out


def _number(value: Any, column: str, where: str, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(f"{label}, {where}, column {column!r}: {value!r} is not a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise DataError(f"{label}, {where}, column {column!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{label}, {where}, column {column!r}: {value!r} is not a finite number")
    return number


def _encode_features(checkpoint: Checkpoint, rows: Rows) -> tuple[np.ndarray, list[str]]:
    """Feature matrix laid out as in training: numbers as they are, categorical columns one-hot or
    ordinal with the training categories. Missing cells take the training fill (data.missing=mean)
    or are an error naming row and column."""
    info = checkpoint.info
    categorical: dict[str, list[str]] = info.get("categorical", {})
    onehot = info.get("categorical_encoding", "onehot") == "onehot"
    fill = info.get("fill", {})
    blocks, names = [], []
    for col in info["source_columns"]:
        cats = categorical.get(col)
        cells = []
        for row, where in zip(rows.values, rows.where):
            value = row.get(col)
            if _is_missing(value):
                if col not in fill:
                    raise DataError(f"{rows.label}, {where}, column {col!r}: missing value; the model needs "
                                    f"every feature (it was trained with data.missing="
                                    f"{checkpoint.data_cfg.missing})")
                value = fill[col]
            if cats is None:
                cells.append(_number(value, col, where, rows.label))
                continue
            text = str(value).strip()
            if text not in cats:
                raise DataError(f"{rows.label}, {where}, column {col!r}: category {text!r} was not seen in "
                                f"training; known: {', '.join(cats[:20])}{' ...' if len(cats) > 20 else ''}")
            cells.append(cats.index(text))
        column = np.asarray(cells, dtype=np.float64)
        if cats is not None and onehot:
            blocks.append(np.eye(len(cats))[column.astype(np.int64)])
            names += [f"{col}={c}" for c in cats]
        else:
            blocks.append(column[:, None])
            names.append(col)
    return np.hstack(blocks), names


# --- sampling and summarising ---

def sample_task(rollout, task, samples: int, temperature: float, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """values [N, K] in original units and validity [N, K] of a Checkpoint.task_for(rows) task,
    through a RolloutGroup on the checkpoint."""
    from rlreg.evaluate.sampling import sample_values

    return sample_values(rollout, task, PREDICT, samples, temperature, chunk)


def summarise(values: np.ndarray, valid: np.ndarray, aggregation: str, alpha: float) -> dict[str, np.ndarray]:
    """prediction, lower, upper (central 1 − alpha sample interval) and samples_valid per row."""
    from rlreg.evaluate.aggregate import aggregate, effective_mask, sample_interval

    lower, upper = sample_interval(values, valid, alpha)
    return {"prediction": aggregate(values, valid, aggregation), "lower": lower, "upper": upper,
            "samples_valid": effective_mask(values, valid).sum(axis=1)}


def resolve_aggregation(checkpoint: Checkpoint, given: str | None) -> tuple[str, str]:
    """(aggregation, where it came from): given > task.json > the run's validation choice in
    metrics.json next to the checkpoint > mean (choose_aggregation's tie-break default)."""
    if given:
        return given, "given"
    if checkpoint.info.get("aggregation"):
        return checkpoint.info["aggregation"], "task.json"
    metrics = checkpoint.model_dir.parent / "metrics.json"
    try:
        payload = json.loads(metrics.read_text())
        if Path(str(payload.get("checkpoint", ""))).name == checkpoint.model_dir.name:
            return payload["val"]["aggregation"], f"validation ({metrics})"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "mean", "default"


# --- writing ---

def _cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_rows(path: str | Path, columns: list[str], records: list[dict]) -> Path:
    """CSV or JSONL by extension, written to a temp file beside `path` and renamed into place."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + JSONL_SUFFIXES:
        raise ConfigError(f"--output {path}: unknown file type {suffix or '(none)'!r}; use "
                          f"{', '.join(CSV_SUFFIXES + JSONL_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as stream:
            if suffix in CSV_SUFFIXES:
                writer = csv.writer(stream)
                writer.writerow(columns)
                for record in records:
                    writer.writerow(["" if _cell(record.get(c)) is None else _cell(record.get(c)) for c in columns])
            else:
                for record in records:
                    stream.write(json.dumps({c: _cell(record.get(c)) for c in columns}) + "\n")
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def _sampling_config(overrides: Sequence[str]):
    from rlreg.config import load_config

    for text in overrides:
        if not text.startswith(OVERRIDE_SECTIONS):
            raise ConfigError(f"predict override {text!r}: only {', '.join(OVERRIDE_SECTIONS)} settings apply "
                              f"(the rest comes from the checkpoint)")
    return load_config(None, list(overrides))


def run_predict(checkpoint_dir: str | Path, input_path: str | Path, output_path: str | Path, *,
                samples: int = 32, alpha: float = 0.1, aggregation: str | None = None,
                temperature: float | None = None, overrides: Sequence[str] = (), rollout=None) -> dict:
    """Predict every row of input_path into output_path; returns a summary. `rollout`: an existing
    RolloutGroup on this checkpoint (else one is started and stopped here)."""
    from rlreg.evaluate.aggregate import AGGREGATIONS

    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"--alpha must lie in (0, 1), got {alpha}")
    if aggregation is not None and aggregation not in AGGREGATIONS:
        raise ConfigError(f"--aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    cfg = _sampling_config(overrides)
    checkpoint = load_checkpoint(checkpoint_dir)
    rows = read_rows(input_path)
    extra = passthrough_columns(checkpoint, rows)
    task = checkpoint.task_for(rows)  # bad rows fail here, before an engine starts
    how, source = resolve_aggregation(checkpoint, aggregation)
    temp = float(checkpoint.info.get("temperature", 1.0) if temperature is None else temperature)
    own = rollout is None
    if own:
        from rlreg.actors.rollout import RolloutGroup
        from rlreg.actors.session import ensure_ray

        ensure_ray(cfg.ray)
        rollout = RolloutGroup(checkpoint.model_dir, cfg.engine, checkpoint.task.codec.meta.max_positions, cfg.ray)
    try:
        values, valid = sample_task(rollout, task, samples, temp, cfg.eval.chunk_inputs)
    finally:
        if own:
            rollout.shutdown()
    result = summarise(values, valid, how, alpha)
    records = [{**{c: row.get(c) for c in extra}, **{k: v[i] for k, v in result.items()}}
               for i, row in enumerate(rows.values)]
    write_rows(output_path, extra + list(PREDICTION_COLUMNS), records)
    return {"rows": len(records), "output": str(output_path), "samples": samples, "temperature": temp,
            "aggregation": how, "aggregation_from": source, "alpha": alpha,
            "rows_without_valid": int((result["samples_valid"] == 0).sum())}

"""Model inputs from a Dataset: text prompts ("age=59 bmi=32.1 ...", a SQL query, or a row's
text fields), or a standardised float32 feature matrix for the MLP encoder."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlreg.data.config import DataConfig
from rlreg.data.dataset import Dataset, labelled_fields
from rlreg.errors import ConfigError, DataError


class _Number(float):
    """A float that writes itself with data.float_format, unless a template field brings its
    own format spec ("{age:.0f}"), in which case that spec wins."""

    fmt: str

    def __new__(cls, value: float, fmt: str) -> "_Number":
        obj = super().__new__(cls, value)
        obj.fmt = fmt
        return obj

    def __format__(self, spec: str) -> str:
        return float(self).__format__(spec) if spec else self.fmt.format(float(self))

    def __str__(self) -> str:
        return self.fmt.format(float(self))


def column_values(dataset: Dataset, indices: np.ndarray) -> list[tuple[str, list]]:
    """Per original column: its name and its values at `indices` — floats for numeric columns,
    category strings for categorical ones (one-hot groups and ordinal codes decoded back)."""
    assert dataset.features is not None
    X = dataset.features[indices]
    out: list[tuple[str, list]] = []
    j = 0
    for col in dataset.source_columns:
        cats = dataset.categorical.get(col)
        if cats is None:
            # + 0.0 turns -0.0 into 0.0 so prompts never show "-0"
            out.append((col, (X[:, j] + 0.0).tolist()))
            j += 1
        elif dataset.categorical_encoding == "onehot":
            codes = X[:, j:j + len(cats)].argmax(axis=1)
            out.append((col, [cats[c] for c in codes]))
            j += len(cats)
        else:
            out.append((col, [cats[int(c)] for c in X[:, j]]))
            j += 1
    return out


def _render_pairs(columns: list[tuple[str, list]], n: int, fmt: str) -> list[str]:
    written = [[fmt.format(v) if isinstance(v, float) else v for v in values]
               for _, values in columns]
    names = [name for name, _ in columns]
    return [" ".join(f"{name}={col[i]}" for name, col in zip(names, written)) for i in range(n)]


def _fill_template(template: str, rows: list[dict], available: list[str]) -> list[str]:
    try:
        return [template.format(**row) for row in rows]
    except KeyError as err:
        raise ConfigError(f"data.prompt_template uses {{{err.args[0]}}}, which is not a column; "
                          f"available: {', '.join(available)}") from None
    except (ValueError, IndexError) as err:
        raise ConfigError(f"data.prompt_template {template!r} cannot be filled: {err}") from None


def _render_fields(fields: dict[str, list[str]], indices: np.ndarray,
                   template: str | None) -> list[str]:
    # Values go in as written, whitespace and all (unlike a SQL query's): line breaks and
    # indentation in a response (code, lists) are part of what its score judges.
    names = list(fields)
    if template is None:
        return [labelled_fields(names, [fields[name][i] for name in names]) for i in indices]
    rows = [{name: fields[name][i] for name in names} for i in indices]
    return _fill_template(template, rows, names)


def render_prompts(dataset: Dataset, indices: np.ndarray | list[int],
                   cfg: DataConfig | None = None) -> list[str]:
    """The text prompt of each row at `indices`, deterministic for a given config.

    Tabular rows: "name=value" pairs (numbers written with cfg.float_format), or
    cfg.prompt_template filled with {column} fields plus {features} (the pairs string).
    Text rows: the text with runs of whitespace collapsed, or the template's {text} field.
    Text rows with fields (jsonl): "name: value" lines, or the template's {field} fields."""
    cfg = cfg or DataConfig()
    indices = np.asarray(indices, dtype=np.int64)
    if dataset.text_fields is not None:
        return _render_fields(dataset.text_fields, indices, cfg.prompt_template)
    if dataset.kind == "text":
        assert dataset.texts is not None
        texts = [" ".join(dataset.texts[i].split()) for i in indices]
        if cfg.prompt_template is None:
            return texts
        return _fill_template(cfg.prompt_template, [{"text": t} for t in texts], ["text"])
    columns = column_values(dataset, indices)
    pairs = _render_pairs(columns, len(indices), cfg.float_format)
    if cfg.prompt_template is None:
        return pairs
    rows = [{name: _Number(values[i], cfg.float_format) if isinstance(values[i], float)
             else values[i] for name, values in columns} | {"features": pairs[i]}
            for i in range(len(indices))]
    return _fill_template(cfg.prompt_template, rows, [name for name, _ in columns] + ["features"])


def prompt_corpus(dataset: Dataset, cfg: DataConfig | None = None) -> list[str]:
    """The train split's prompts: what a tokenizer may be fitted on without seeing test rows."""
    return render_prompts(dataset, dataset.splits.train, cfg)


@dataclass
class FeatureStats:
    mean: np.ndarray  # float64 [f]
    std: np.ndarray  # float64 [f], never 0


def fit_feature_stats(dataset: Dataset) -> FeatureStats:
    """Per-feature mean and std over the TRAIN split only; constant columns get std 1 so they
    map to 0 instead of dividing by zero."""
    if dataset.features is None:
        raise DataError(f"{dataset.name}: vector input needs a tabular source; this one is "
                        f"{dataset.kind} (use data.input=text)")
    train = dataset.features[dataset.splits.train]
    if len(train) == 0:
        raise DataError(f"{dataset.name}: the train split is empty")
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return FeatureStats(mean=mean, std=std)


def feature_matrix(dataset: Dataset, indices: np.ndarray | list[int],
                   train_stats: FeatureStats) -> np.ndarray:
    """Standardised features at `indices` as float32 [n, f] (vector input)."""
    if dataset.features is None:
        raise DataError(f"{dataset.name}: vector input needs a tabular source; this one is "
                        f"{dataset.kind} (use data.input=text)")
    X = dataset.features[np.asarray(indices, dtype=np.int64)]
    if X.shape[1] != len(train_stats.mean):
        raise DataError(f"{dataset.name}: {X.shape[1]} features but the stats cover "
                        f"{len(train_stats.mean)}")
    return ((X - train_stats.mean) / train_stats.std).astype(np.float32)

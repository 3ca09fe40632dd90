"""The loaded data set: features or texts, targets, and its splits — the one shape every source
produces, so rendering and training never care where the rows came from."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rlreg.data.splits import SPLIT_NAMES, Splits
from rlreg.errors import DataError

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def labelled_fields(names: list[str], values: list[str]) -> str:
    """One row's text fields as "name: value" lines (the default prompt of a multi-field row).

    One field a line, each labelled: the values are free text (a prompt, a response) that may hold
    spaces and "=", so tabular's space-joined "name=value" pairs would blur where one field ends
    and the next begins; the label also tells the model which text is the prompt and which the
    response it scores."""
    return "\n".join(f"{name}: {value}" for name, value in zip(names, values))


def target_stats(y: np.ndarray) -> dict[str, float | int]:
    """Count, min, max, mean, std and a few quantiles of `y` (NaN-free by construction)."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return {"count": 0}
    stats: dict[str, float | int] = {"count": int(len(y)), "min": float(y.min()),
                                     "max": float(y.max()), "mean": float(y.mean()),
                                     "std": float(y.std())}
    for q, value in zip(QUANTILES, np.quantile(y, QUANTILES)):
        stats[f"q{int(round(q * 100)):02d}"] = float(value)
    return stats


@dataclass
class Dataset:
    name: str
    kind: str  # "tabular" | "text"
    features: np.ndarray | None  # float64 [n, f] after categorical encoding; None for text
    feature_names: list[str]
    texts: list[str] | None  # e.g. SQL queries; None for tabular, or to derive from text_fields
    y: np.ndarray  # float64 [n]
    target_name: str
    splits: Splits
    source_path: str | None = None
    source: str = ""  # the config string it came from, e.g. "uci:concrete"
    # Text rows made of several named fields (jsonl: prompt, response, ...), in file order; None
    # for one-text rows (sqlcard). `texts` is then derived: the fields as labelled_fields lines,
    # so code that reads one text per row (baselines, `inputs`) keeps working.
    text_fields: dict[str, list[str]] | None = None
    # Original feature columns in order, and the categories of the categorical ones (in code
    # order): rendering writes "Sex=M" instead of three one-hot numbers.
    source_columns: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    categorical_encoding: str = "onehot"
    # data.missing=mean: the train mean (numeric) or mode (categorical) of each source column.
    fill: dict = field(default_factory=dict)
    row_ids: np.ndarray | None = None  # each row's 0-based position among the source's data rows
    notes: list[str] = field(default_factory=list)  # what loading did: drops, imputation, ...

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.float64)
        n = len(self.y)
        if self.kind == "tabular":
            if self.features is None or self.features.ndim != 2 or len(self.features) != n:
                raise DataError(f"{self.name}: features must be a [{n}, f] array")
            if self.features.shape[1] != len(self.feature_names):
                raise DataError(f"{self.name}: {self.features.shape[1]} feature columns but "
                                f"{len(self.feature_names)} names")
            if self.text_fields is not None:
                raise DataError(f"{self.name}: a tabular dataset has no text_fields")
        elif self.kind == "text":
            if self.text_fields is not None:
                self._check_text_fields(n)
            if self.texts is None or len(self.texts) != n:
                raise DataError(f"{self.name}: texts must hold one string per target ({n})")
        else:
            raise DataError(f"{self.name}: kind must be 'tabular' or 'text', got {self.kind!r}")
        if self.row_ids is None:
            self.row_ids = np.arange(n, dtype=np.int64)
        if not self.source_columns and self.kind == "tabular":
            self.source_columns = list(self.feature_names)
        self.splits.check(n, self.name)

    def _check_text_fields(self, n: int) -> None:
        if not self.text_fields:
            raise DataError(f"{self.name}: text_fields must name at least one field")
        for name, values in self.text_fields.items():
            if len(values) != n:
                raise DataError(f"{self.name}: text field {name!r} has {len(values)} values for "
                                f"{n} targets")
            odd = next((v for v in values if not isinstance(v, str)), None)
            if odd is not None:
                raise DataError(f"{self.name}: text field {name!r} holds {odd!r}; values must be "
                                f"strings")
        names = list(self.text_fields)
        derived = [labelled_fields(names, row) for row in zip(*self.text_fields.values())]
        if self.texts is None:
            self.texts = derived
        elif self.texts != derived:
            # Two copies of a row's input that disagree would train one model and score another.
            raise DataError(f"{self.name}: texts disagree with text_fields; pass texts=None and "
                            f"they are derived")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def n_rows(self) -> int:
        return len(self.y)

    def inputs(self, indices: np.ndarray) -> np.ndarray | list[str]:
        """Feature rows (tabular) or texts (text) at `indices`."""
        if self.kind == "text":
            assert self.texts is not None
            return [self.texts[i] for i in indices]
        assert self.features is not None
        return self.features[indices]

    def subset(self, split_name: str) -> tuple[np.ndarray | list[str], np.ndarray]:
        """(X or texts, y) of one split: "train", "val" or "test"."""
        idx = self.splits[split_name]
        return self.inputs(idx), self.y[idx]

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "source_path": self.source_path,
            "kind": self.kind,
            "rows": self.n_rows,
            "n_features": len(self.feature_names),
            "text_fields": None if self.text_fields is None else list(self.text_fields),
            "feature_names": list(self.feature_names),
            "categorical": {k: list(v) for k, v in self.categorical.items()},
            "categorical_encoding": self.categorical_encoding if self.categorical else None,
            "target": self.target_name,
            "target_stats": target_stats(self.y),
            "splits": self.splits.sizes(),
            "official_splits": self.splits.official,
            "notes": list(self.notes),
        }

    def split_target_stats(self) -> dict[str, dict[str, float | int]]:
        return {name: target_stats(self.y[self.splits[name]]) for name in SPLIT_NAMES}

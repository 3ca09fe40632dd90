"""The fitted input transform of a tabular dataset — column order, categories and their encoding,
missing-value fills — saved with a checkpoint at training and applied to new rows at prediction,
so both encode a row the same way."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlreg.data.dataset import Dataset
from rlreg.data.rows import Rows, is_missing
from rlreg.data.tabular import encode_categorical
from rlreg.errors import DataError


@dataclass
class TabularPreprocessing:
    columns: list[str]  # source feature columns, in training order
    categorical: dict[str, list[str]] = field(default_factory=dict)  # column -> sorted categories
    encoding: str = "onehot"  # onehot | ordinal
    fill: dict[str, Any] = field(default_factory=dict)  # data.missing=mean: train mean / mode per column
    missing_policy: str = "error"

    @classmethod
    def of(cls, dataset: Dataset, missing_policy: str) -> "TabularPreprocessing":
        return cls(columns=list(dataset.source_columns), categorical={k: list(v) for k, v in dataset.categorical.items()},
                   encoding=dataset.categorical_encoding, fill=dict(dataset.fill), missing_policy=missing_policy)

    def to_info(self) -> dict:
        """The keys task.json holds them under."""
        return {"source_columns": self.columns, "categorical": self.categorical,
                "categorical_encoding": self.encoding, "fill": self.fill}

    @classmethod
    def from_info(cls, info: dict, missing_policy: str) -> "TabularPreprocessing":
        return cls(columns=list(info["source_columns"]), categorical=dict(info.get("categorical", {})),
                   encoding=info.get("categorical_encoding", "onehot"), fill=dict(info.get("fill", {})),
                   missing_policy=missing_policy)

    def encode(self, rows: Rows) -> tuple[np.ndarray, list[str]]:
        """Feature matrix laid out as in training: numbers as they are, categorical columns one-hot or
        ordinal with the training categories. Missing cells take the training fill (data.missing=mean)
        or are an error naming row and column."""
        blocks, names = [], []
        for col in self.columns:
            cats = self.categorical.get(col)
            cells = [self._cell(row.get(col), col, cats, where, rows.label)
                     for row, where in zip(rows.values, rows.where)]
            if cats is None:
                blocks.append(np.asarray(cells, dtype=np.float64)[:, None])
                names.append(col)
            else:
                block, block_names = encode_categorical(np.asarray(cells, dtype=object), cats, col, self.encoding)
                blocks.append(block)
                names += block_names
        return np.hstack(blocks), names

    def _cell(self, value: Any, col: str, cats: list[str] | None, where: str, label: str) -> float | str:
        if is_missing(value):
            if col not in self.fill:
                raise DataError(f"{label}, {where}, column {col!r}: missing value; the model needs every "
                                f"feature (it was trained with data.missing={self.missing_policy})")
            value = self.fill[col]
        if cats is None:
            return _number(value, col, where, label)
        text = str(value).strip()
        if text not in cats:
            raise DataError(f"{label}, {where}, column {col!r}: category {text!r} was not seen in "
                            f"training; known: {', '.join(cats[:20])}{' ...' if len(cats) > 20 else ''}")
        return text


def _number(value: Any, column: str, where: str, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DataError(f"{label}, {where}, column {column!r}: {value!r} is not a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        raise DataError(f"{label}, {where}, column {column!r}: {value!r} is not a number") from None
    if not np.isfinite(number):
        raise DataError(f"{label}, {where}, column {column!r}: {value!r} is not a finite number")
    return number

"""Train / val / test index splits: seeded, deterministic, and checked for overlap."""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rlreg.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    """Row positions of each split. `official` marks splits that come from the source itself."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    official: bool = False

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; known: {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {name: int(len(self[name])) for name in SPLIT_NAMES}

    def check(self, n_rows: int, where: str) -> None:
        """Raise DataError unless every split lies in [0, n_rows) and no row is in two splits."""
        seen = np.zeros(n_rows, dtype=bool)
        for name in SPLIT_NAMES:
            idx = self[name]
            if len(idx) and (idx.min() < 0 or idx.max() >= n_rows):
                raise DataError(f"{where}: {name} split has row indices outside [0, {n_rows})")
            if seen[idx].any() or len(np.unique(idx)) != len(idx):
                raise DataError(f"{where}: {name} split repeats rows or shares rows with "
                                f"another split")
            seen[idx] = True


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """An independent random stream per (seed, purpose), so e.g. changing val_fraction does not
    reshuffle which rows max_rows keeps. crc32 keeps the salt stable across Python runs."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def _count(n: int, fraction: float) -> int:
    return int(np.floor(n * fraction + 0.5))  # round half up: Python's round() is banker's


def subsample(indices: np.ndarray, k: int, seed: int, purpose: str = "subsample") -> np.ndarray:
    """k of `indices` chosen at random, kept in their original order; all of them if k >= len."""
    indices = np.asarray(indices, dtype=np.int64)
    if k >= len(indices):
        return indices
    chosen = rng_for(seed, purpose).choice(len(indices), size=k, replace=False)
    return indices[np.sort(chosen)]


def subsample_within(parts: list[np.ndarray], max_rows: int, seed: int) -> list[np.ndarray]:
    """Shrink several index sets to about max_rows in total, each in proportion to its size, so
    a subsampled official test set is still a subset of the official one."""
    total = sum(len(p) for p in parts)
    if max_rows >= total:
        return [np.asarray(p, dtype=np.int64) for p in parts]
    counts = [_count(max_rows, len(p) / total) for p in parts]
    counts[0] += max_rows - sum(counts)  # rounding slack goes to the first (train) part
    return [subsample(p, k, seed, purpose=f"subsample-part{i}")
            for i, (p, k) in enumerate(zip(parts, counts))]


def carve_val(train: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Move a seeded `val_fraction` of `train` into a validation set; both keep train's order."""
    train = np.asarray(train, dtype=np.int64)
    n_val = _count(len(train), val_fraction)
    if n_val == 0:
        return train, np.empty(0, dtype=np.int64)
    if n_val >= len(train):
        raise DataError(f"val_fraction={val_fraction} leaves no training rows out of {len(train)}")
    is_val = np.zeros(len(train), dtype=bool)
    is_val[rng_for(seed, "val").choice(len(train), size=n_val, replace=False)] = True
    return train[~is_val], train[is_val]


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Seeded train/val/test split of rows 0..n-1: test is test_fraction of all rows, val is
    val_fraction of the rest. Each split is sorted."""
    n_test = _count(n, test_fraction)
    if n - n_test < 1:
        raise DataError(f"only {n} rows: test_fraction={test_fraction} leaves none for training")
    order = rng_for(seed, "test").permutation(n)
    test = np.sort(order[:n_test])
    train, val = carve_val(np.sort(order[n_test:]), val_fraction, seed)
    return Splits(train=train, val=val, test=test, official=False)


def plan_rows(n: int, *, val_fraction: float, test_fraction: float, seed: int,
              max_rows: int | None, official: tuple[np.ndarray, np.ndarray] | None = None,
              ) -> tuple[np.ndarray, Splits]:
    """Decide which of rows 0..n-1 to keep and how to split them.

    Returns (rows, splits): `rows` are the kept row positions (sorted) and `splits` index into
    `rows`. Without official splits, max_rows subsamples before splitting; with them, it
    subsamples within the official train and test parts and val is carved from train."""
    if official is None:
        rows = np.arange(n, dtype=np.int64)
        if max_rows is not None:
            rows = subsample(rows, max_rows, seed)
        return rows, split_indices(len(rows), val_fraction, test_fraction, seed)
    train, test = (np.asarray(p, dtype=np.int64) for p in official)
    if max_rows is not None:
        train, test = subsample_within([train, test], max_rows, seed)
    if len(train) == 0:
        raise DataError("the official train split is empty")
    train, val = carve_val(train, val_fraction, seed)
    rows = np.unique(np.concatenate([train, val, test]))

    def position(idx: np.ndarray) -> np.ndarray:
        return np.searchsorted(rows, idx).astype(np.int64)

    return rows, Splits(train=position(train), val=position(val), test=position(test),
                        official=True)


def plan_usable_rows(bad: np.ndarray, cfg, where: str, refusal: Callable[[int], str], dropped: str, noun: str,
                     notes: list[str]) -> tuple[np.ndarray, Splits]:
    """The rows of a source without official splits, less the unusable ones (`bad`): dropped
    under data.missing=drop (noted as `dropped`), otherwise a DataError at `where` naming the first
    one (`refusal(index)`); then the kept rows' splits as plan_rows gives them, with the source's
    row positions (row_ids) instead of positions among the kept rows. Notes what was subsampled."""
    if bad.any():
        if cfg.missing != "drop":
            raise DataError(f"{refusal(int(np.flatnonzero(bad)[0]))} ({int(bad.sum())} such lines); "
                            f"set data.missing=drop to skip them")
        notes.append(f"dropped {int(bad.sum())} {dropped}")
    kept = np.flatnonzero(~bad)
    if len(kept) == 0:
        raise DataError(f"{where}: no usable rows")
    rows, splits = plan_rows(len(kept), val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                             seed=cfg.seed, max_rows=cfg.max_rows)
    row_ids = kept[rows]
    if cfg.max_rows is not None and len(row_ids) < len(kept):
        notes.append(f"subsampled to {len(row_ids)} of {len(kept)} {noun} (data.max_rows={cfg.max_rows})")
    return row_ids, splits

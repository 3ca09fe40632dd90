"""Turn K sampled predictions per input into one point prediction and an interval.

Samples arrive as a float matrix [N, K] with a boolean mask [N, K] of samples that decoded
to a number. A sample counts only if the mask says so AND it is finite (a decoder that
returns NaN for a bad sequence is treated the same as one flagged invalid). A row with no
counting sample aggregates to NaN; `rows_without_valid` counts such rows so callers can
report them instead of silently dropping them.

Everything is vectorised over rows: invalid entries are pushed to the end of each sorted
row, and per-row counts decide which positions take part.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# Fraction cut from EACH side before averaging (so 20 % of the valid samples are dropped
# in total). The cut count is floor(TRIM_FRACTION * n_valid), as in scipy.stats.trim_mean,
# so rows with fewer than 10 valid samples are not trimmed at all.
TRIM_FRACTION = 0.1

# Order matters: it is the tie-break order of choose_aggregation (mean wins ties).
_PREFERENCE = ("mean", "median", "trimmed_mean")


def _check_shapes(samples: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2:
        raise ValueError(f"samples must be a 2-D array [N, K], got shape {samples.shape}")
    if valid is None:
        valid = np.ones(samples.shape, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != samples.shape:
        raise ValueError(f"valid mask shape {valid.shape} does not match samples shape {samples.shape}")
    return samples, valid & np.isfinite(samples)


def effective_mask(samples: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """The mask of samples that take part: flagged valid and finite."""
    return _check_shapes(samples, valid)[1]


def rows_without_valid(samples: np.ndarray, valid: np.ndarray | None) -> int:
    """How many rows have no usable sample (these aggregate to NaN)."""
    return int((~effective_mask(samples, valid).any(axis=1)).sum())


def sorted_valid(samples: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row sorted with its valid values first; returns (sorted [N, K], n_valid [N]).

    `valid` must already be the effective mask (see `effective_mask`)."""
    # +inf sorts after every finite value, so valid values occupy the first n_valid slots.
    filled = np.where(valid, samples, np.inf)
    return np.sort(filled, axis=1), valid.sum(axis=1)


def _row_quantile(sorted_rows: np.ndarray, n_valid: np.ndarray, q: float) -> np.ndarray:
    """Quantile q of the first n_valid entries of each sorted row (numpy's 'linear' rule)."""
    out = np.full(sorted_rows.shape[0], np.nan)
    has = n_valid > 0
    if not has.any():
        return out
    rows = sorted_rows[has]
    position = q * (n_valid[has] - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, n_valid[has] - 1)
    frac = position - below
    idx = np.arange(rows.shape[0])
    # `above` is clipped to the last valid slot, so the +inf padding is never read.
    low_value, high_value = rows[idx, below], rows[idx, above]
    out[has] = low_value + frac * (high_value - low_value)
    return out


def _mean(samples: np.ndarray, valid: np.ndarray) -> np.ndarray:
    count = valid.sum(axis=1)
    total = np.where(valid, samples, 0.0).sum(axis=1)
    out = np.full(samples.shape[0], np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


def _median(samples: np.ndarray, valid: np.ndarray) -> np.ndarray:
    sorted_rows, n_valid = sorted_valid(samples, valid)
    return _row_quantile(sorted_rows, n_valid, 0.5)


def _trimmed_mean(samples: np.ndarray, valid: np.ndarray) -> np.ndarray:
    sorted_rows, n_valid = sorted_valid(samples, valid)
    cut = np.floor(TRIM_FRACTION * n_valid).astype(np.int64)
    positions = np.arange(samples.shape[1])[None, :]
    keep = (positions >= cut[:, None]) & (positions < (n_valid - cut)[:, None])
    return _mean(np.where(keep, sorted_rows, 0.0), keep)


Aggregation = Callable[[np.ndarray, np.ndarray], np.ndarray]

AGGREGATIONS: dict[str, Aggregation] = {
    "mean": _mean,
    "median": _median,
    "trimmed_mean": _trimmed_mean,
}


def aggregate(samples: np.ndarray, valid: np.ndarray | None, how: str) -> np.ndarray:
    """Aggregate samples [N, K] to [N] with the named rule; rows with no valid sample → NaN."""
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {sorted(AGGREGATIONS)}")
    samples, mask = _check_shapes(samples, valid)
    return AGGREGATIONS[how](samples, mask)


def choose_aggregation(samples_val: np.ndarray, valid_val: np.ndarray | None, y_val: np.ndarray) -> str:
    """The aggregation with the lowest validation RMSE; ties go to 'mean'.

    Scored on rows that have at least one valid sample (the same rows for every rule,
    since all rules are defined exactly where a valid sample exists).
    """
    samples, mask = _check_shapes(samples_val, valid_val)
    y = np.asarray(y_val, dtype=np.float64).reshape(-1)
    if y.shape[0] != samples.shape[0]:
        raise ValueError(f"y_val has {y.shape[0]} rows but samples have {samples.shape[0]}")
    rows = mask.any(axis=1) & np.isfinite(y)
    if not rows.any():
        raise ValueError("cannot choose an aggregation: no validation row has a valid sample")
    def validation_rmse(name: str) -> float:
        prediction = AGGREGATIONS[name](samples[rows], mask[rows])
        return float(np.sqrt(np.mean((prediction - y[rows]) ** 2)))

    best_name = _PREFERENCE[0]
    best_rmse = validation_rmse(best_name)
    for name in _PREFERENCE[1:]:
        rmse = validation_rmse(name)
        # Must win by more than float noise, so rules that agree leave 'mean' in place.
        if rmse < best_rmse and not np.isclose(rmse, best_rmse, rtol=1e-12, atol=0.0):
            best_name, best_rmse = name, rmse
    return best_name


def sample_interval(
    samples: np.ndarray, valid: np.ndarray | None, alpha: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Central (1 − alpha) interval from the valid samples of each row: the alpha/2 and
    1 − alpha/2 quantiles. Rows with no valid sample give NaN bounds."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    samples, mask = _check_shapes(samples, valid)
    sorted_rows, n_valid = sorted_valid(samples, mask)
    return (
        _row_quantile(sorted_rows, n_valid, alpha / 2),
        _row_quantile(sorted_rows, n_valid, 1.0 - alpha / 2),
    )

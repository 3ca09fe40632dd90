"""Regression metrics, sample-based CRPS and interval coverage, with bootstrap CIs.

NaN policy: point metrics refuse non-finite rows (DataError, a ValueError) unless the
caller passes nan_policy="omit", which drops them and reports `n_dropped`. The evaluate_*
entry points do the dropping themselves and say how many rows they dropped: a prediction
missing because no sample decoded is a fact about the model, not a reason to crash.
"""

from __future__ import annotations

import warnings
from typing import Callable, Literal

import numpy as np
from scipy import stats
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from rlreg.errors import DataError
from rlreg.evaluate.aggregate import aggregate, effective_mask, sample_interval, sorted_valid

NanPolicy = Literal["raise", "omit"]
Transform = Callable[[np.ndarray], np.ndarray]

# Bootstrap memory cap: index matrices are built in chunks of at most this many entries.
_BOOT_CHUNK_ENTRIES = 4_000_000


# --- statistics that reduce over the last axis, so a stack of resamples runs in one call ---

def _batched(fn: Callable) -> Callable:
    fn.batched = True  # read by bootstrap_ci: fn accepts [B, n] arrays and returns [B]
    return fn


@_batched
def batched_rmse(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((y - yhat) ** 2, axis=-1))


@_batched
def batched_mae(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    return np.mean(np.abs(y - yhat), axis=-1)


@_batched
def batched_r2(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    residual = np.sum((y - yhat) ** 2, axis=-1)
    total = np.sum((y - y.mean(axis=-1, keepdims=True)) ** 2, axis=-1)
    # A resample with constant y has no R²: NaN, skipped by the percentile step.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 1.0 - residual / total, np.nan)


_CI_STATISTICS = {"rmse": batched_rmse, "mae": batched_mae, "r2": batched_r2}


def _as_1d(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 1:  # a column vector, as sklearn sometimes gives
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def finite_rows(y: np.ndarray, yhat: np.ndarray, nan_policy: NanPolicy = "raise") -> tuple[np.ndarray, np.ndarray, int]:
    """Validate a (y, yhat) pair; returns the finite rows and how many were dropped."""
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    y, yhat = _as_1d("y", y), _as_1d("yhat", yhat)
    if y.shape != yhat.shape:
        raise ValueError(f"y has {y.shape[0]} rows but yhat has {yhat.shape[0]}")
    keep = np.isfinite(y) & np.isfinite(yhat)
    dropped = int((~keep).sum())
    if dropped and nan_policy == "raise":
        raise DataError(
            f"{dropped} of {y.shape[0]} rows have a non-finite target or prediction; "
            "pass only finite rows or use nan_policy='omit'"
        )
    if not keep.any():
        raise DataError(f"no finite (target, prediction) pair among {y.shape[0]} rows")
    return y[keep], yhat[keep], dropped


def point_metrics(y: np.ndarray, yhat: np.ndarray, nan_policy: NanPolicy = "raise") -> dict:
    """rmse, mae, r2, spearman, kendall (sklearn / scipy definitions), n, n_dropped.

    r2 and the rank correlations need ≥ 2 rows and are NaN when undefined (e.g. constant
    predictions give no rank correlation)."""
    y, yhat, dropped = finite_rows(y, yhat, nan_policy)
    n = y.shape[0]
    result = {
        "rmse": float(root_mean_squared_error(y, yhat)),
        "mae": float(mean_absolute_error(y, yhat)),
        "r2": float("nan"),
        "spearman": float("nan"),
        "kendall": float("nan"),
        "n": n,
        "n_dropped": dropped,
    }
    if n >= 2:
        with warnings.catch_warnings():
            # Constant inputs: scipy warns and returns NaN, which is the answer we want.
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            result["r2"] = float(r2_score(y, yhat)) if np.ptp(y) > 0 else float("nan")
            result["spearman"] = float(stats.spearmanr(y, yhat).statistic)
            result["kendall"] = float(stats.kendalltau(y, yhat).statistic)
    return result


def crps_per_row(samples: np.ndarray, valid: np.ndarray | None, y: np.ndarray) -> np.ndarray:
    """CRPS of each row's empirical sample distribution: E|X − y| − ½ E|X − X'|.

    Uses the 1/m² form (pairs i = j included), which is exactly the CRPS of the empirical
    CDF: defined for one sample (then |x − y|) and equal to |c − y| when all samples are c.
    Rows with no valid sample give NaN."""
    samples = np.asarray(samples, dtype=np.float64)
    mask = effective_mask(samples, valid)
    y = _as_1d("y", y)
    if y.shape[0] != samples.shape[0]:
        raise ValueError(f"y has {y.shape[0]} rows but samples have {samples.shape[0]}")
    sorted_rows, m = sorted_valid(samples, mask)
    slot = np.arange(1, samples.shape[1] + 1)[None, :]
    in_row = slot <= m[:, None]
    values = np.where(in_row, sorted_rows, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        to_target = np.where(in_row, np.abs(values - y[:, None]), 0.0).sum(axis=1) / m
        # Σ_i Σ_j |x_i − x_j| = 2 Σ_i (2i − m − 1) x_(i) over the sorted valid values.
        spread_weights = np.where(in_row, 2 * slot - m[:, None] - 1, 0)
        half_spread = (spread_weights * values).sum(axis=1) / m.astype(np.float64) ** 2
    return np.where(m > 0, to_target - half_spread, np.nan)


def crps_samples(samples: np.ndarray, valid: np.ndarray | None, y: np.ndarray) -> float:
    """Mean CRPS over rows (see crps_per_row). Every row needs a valid sample and a finite
    target: drop empty rows first and report them (evaluate_samples does)."""
    per_row = crps_per_row(samples, valid, y)
    bad = int((~np.isfinite(per_row)).sum())
    if bad:
        raise DataError(f"CRPS undefined for {bad} rows (no valid sample or non-finite target)")
    return float(per_row.mean())


def coverage(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows with lo ≤ y ≤ hi."""
    lo, hi, y = _as_1d("lo", lo), _as_1d("hi", hi), _as_1d("y", y)
    if not lo.shape == hi.shape == y.shape:
        raise ValueError(f"lo, hi, y lengths differ: {lo.shape[0]}, {hi.shape[0]}, {y.shape[0]}")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and np.isfinite(y).all()):
        raise DataError("coverage needs finite bounds and targets; drop rows without an interval")
    if (lo > hi).any():
        raise ValueError(f"{int((lo > hi).sum())} intervals have lo > hi")
    return float(np.mean((lo <= y) & (y <= hi)))


def bootstrap_ci(
    fn: Callable[..., float | np.ndarray],
    *arrays: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    batched: bool | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI of fn(*arrays) resampling rows with replacement.

    If fn is batched (marked with a `batched` attribute, or batched=True) it receives
    arrays of shape [B, n, ...] and returns [B] — one call per chunk instead of one per
    resample. Both paths draw the same resamples, so they give the same interval.
    Resamples where fn is NaN (e.g. R² of constant y) are skipped."""
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0]
    if n == 0 or any(a.shape[0] != n for a in arrays):
        raise ValueError(f"bootstrap arrays must share a non-zero row count, got {[a.shape[0] for a in arrays]}")
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot ≥ 1, got level={level}, n_boot={n_boot}")
    if batched is None:
        batched = bool(getattr(fn, "batched", False))
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _BOOT_CHUNK_ENTRIES // n))
    estimates = []
    for start in range(0, n_boot, chunk):
        index = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        if batched:
            estimates.append(np.asarray(fn(*(a[index] for a in arrays)), dtype=np.float64).reshape(-1))
        else:
            estimates.append(np.array([fn(*(a[row] for a in arrays)) for row in index], dtype=np.float64))
    values = np.concatenate(estimates)
    if values.shape[0] != n_boot:
        raise ValueError(f"batched fn returned {values.shape[0]} values for {n_boot} resamples")
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _point_block(y: np.ndarray, yhat: np.ndarray, n_boot: int, seed: int, nan_policy: NanPolicy) -> dict:
    """Point metrics plus 95 % bootstrap CIs for rmse / mae / r2."""
    y, yhat, dropped = finite_rows(y, yhat, nan_policy)
    result = point_metrics(y, yhat)
    result["n_dropped"] = dropped
    for name, statistic in _CI_STATISTICS.items():
        result[f"{name}_ci"] = list(bootstrap_ci(statistic, y, yhat, n_boot=n_boot, seed=seed))
    return result


def _empty_block() -> dict:
    nan = float("nan")
    block = {name: nan for name in ("rmse", "mae", "r2", "spearman", "kendall")}
    block.update({f"{name}_ci": [nan, nan] for name in _CI_STATISTICS})
    block.update(n=0, n_dropped=0)
    return block


def evaluate_samples(
    samples_orig: np.ndarray,
    valid: np.ndarray | None,
    y_orig: np.ndarray,
    how: str,
    to_normalised: Transform | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Metrics of K samples per row, in original units (plus a "normalised" sub-dict).

    Rows where no sample decoded cannot be scored: they are left out of every metric and
    counted in `n_no_valid` (and show in `invalid_rate`). If no row can be scored the
    metrics are NaN rather than an exception, so a collapsed policy still gets a report."""
    samples = np.asarray(samples_orig, dtype=np.float64)
    mask = effective_mask(samples, valid)
    y = _as_1d("y_orig", y_orig)
    if y.shape[0] != samples.shape[0]:
        raise ValueError(f"y_orig has {y.shape[0]} rows but samples have {samples.shape[0]}")
    if not np.isfinite(y).all():
        raise DataError(f"{int((~np.isfinite(y)).sum())} targets are not finite")
    scored = mask.any(axis=1)
    result: dict = {
        "aggregation": how,
        "n_rows": int(y.shape[0]),
        "n_no_valid": int((~scored).sum()),
        "samples_per_row": int(samples.shape[1]),
        "invalid_rate": float(1.0 - mask.mean()) if mask.size else float("nan"),
    }
    yhat = aggregate(samples, mask, how)
    if not scored.any():
        result.update(_empty_block(), crps=float("nan"), coverage90=float("nan"), width90=float("nan"))
        if to_normalised is not None:
            result["normalised"] = {**_empty_block(), "crps": float("nan")}
        return result
    kept_samples, kept_mask, kept_y = samples[scored], mask[scored], y[scored]
    result.update(_point_block(kept_y, yhat[scored], n_boot, seed, "raise"))
    result["crps"] = crps_samples(kept_samples, kept_mask, kept_y)
    lo, hi = sample_interval(kept_samples, kept_mask, alpha=0.1)  # the 5–95 % interval
    result["coverage90"] = coverage(lo, hi, kept_y)
    result["width90"] = float(np.mean(hi - lo))  # sharpness: coverage alone rewards wide intervals
    if to_normalised is not None:
        result["normalised"] = _normalised_block(kept_samples, kept_mask, kept_y, yhat[scored], to_normalised, n_boot, seed)
    return result


def _normalised_block(
    samples: np.ndarray, mask: np.ndarray, y: np.ndarray, yhat: np.ndarray,
    to_normalised: Transform, n_boot: int, seed: int,
) -> dict:
    z_y, z_hat = _transform("y", to_normalised, y), _transform("yhat", to_normalised, yhat)
    # A non-linear map (e.g. log) can be undefined for some predictions: drop and count them.
    block = _point_block(z_y, z_hat, n_boot, seed, "omit")
    z_samples = np.full(samples.shape, np.nan)
    z_samples[mask] = _transform("samples", to_normalised, samples[mask])  # 1-D call only
    per_row = crps_per_row(z_samples, mask, z_y)
    block["crps"] = float(np.nanmean(per_row)) if np.isfinite(per_row).any() else float("nan")
    return block


def _transform(name: str, to_normalised: Transform, values: np.ndarray) -> np.ndarray:
    out = np.asarray(to_normalised(values), dtype=np.float64).reshape(-1)
    if out.shape != values.shape:
        raise ValueError(f"to_normalised changed the shape of {name}: {values.shape} → {out.shape}")
    return out


def evaluate_point(
    yhat: np.ndarray,
    y: np.ndarray,
    to_normalised: Transform | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    nan_policy: NanPolicy = "raise",
) -> dict:
    """Metrics of point predictions (baselines): the keys of evaluate_samples that make
    sense without samples — no crps, coverage90, width90, invalid_rate."""
    result = {"aggregation": None, "n_rows": int(np.size(y))}
    result.update(_point_block(y, yhat, n_boot, seed, nan_policy))
    if to_normalised is not None:
        y_kept, yhat_kept, _ = finite_rows(y, yhat, nan_policy)
        z_y = _transform("y", to_normalised, y_kept)
        z_hat = _transform("yhat", to_normalised, yhat_kept)
        result["normalised"] = _point_block(z_y, z_hat, n_boot, seed, "omit")
    return result

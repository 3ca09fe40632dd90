"""Group filtering for continuous rewards.

With a group-relative baseline, a group whose rewards barely differ carries (almost) no
learning signal but still costs a learner pass, and GRPO's std division would blow its noise
up to unit scale. DAPO drops groups whose binary rewards are all equal; for numeric rewards
the analogue is a threshold on the within-group spread.
"""
from __future__ import annotations

import numpy as np


def std_filter(rewards: np.ndarray, tol: float) -> np.ndarray:
    """Keep mask [B]: True for groups whose population std (ddof=0) of rewards exceeds `tol`.

    A group holding NaN/inf has no defined spread and is dropped (its std compares False)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"std_filter: rewards must have shape [B, G], got {r.shape}")
    if tol < 0:
        raise ValueError(f"std_filter: tol must be >= 0, got {tol}")
    with np.errstate(invalid="ignore"):  # inf - inf inside std of a non-finite group
        spread = r.std(axis=1, ddof=0)
    return spread > tol


def filtered_fraction(keep: np.ndarray) -> float:
    """Fraction of groups a keep mask drops (0.0 for an empty batch), for logging."""
    keep = np.asarray(keep, dtype=bool)
    return 0.0 if keep.size == 0 else float(1.0 - keep.mean())

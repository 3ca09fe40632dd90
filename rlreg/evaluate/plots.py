"""Parity and residual plots written as PNG files.

Figures are drawn on an explicit Agg canvas (FigureCanvasAgg) instead of through pyplot:
that needs no display, keeps no global figure list to leak across many evaluations, and
does not change the matplotlib backend of a user who imports rlreg in a notebook.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Above this many points, interval bars are drawn for an evenly spaced subset: thousands
# of overlapping bars hide the points they belong to.
MAX_INTERVAL_BARS = 300


def _new_figure() -> tuple[Figure, object]:
    figure = Figure(figsize=(5.5, 5.0), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)  # attaches the Agg canvas to the figure
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return target


def _finite_pairs(y: np.ndarray, yhat: np.ndarray, *more: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Mask of rows where y, yhat and any given bounds are all finite, and the drop count."""
    keep = np.isfinite(y) & np.isfinite(yhat)
    for extra in more:
        if extra is not None:
            keep &= np.isfinite(extra)
    return keep, int((~keep).sum())


def _point_style(n: int) -> dict:
    # Fade and shrink markers as n grows so dense regions still show their density.
    return {"s": 14 if n <= 1000 else 5, "alpha": 0.8 if n <= 300 else 0.35, "linewidths": 0}


def _summary(y: np.ndarray, yhat: np.ndarray, dropped: int) -> str:
    rmse = float(np.sqrt(np.mean((y - yhat) ** 2)))
    total = float(np.sum((y - y.mean()) ** 2))
    lines = [f"n = {y.size}", f"RMSE = {rmse:.4g}"]
    if total > 0:
        lines.append(f"R² = {1 - float(np.sum((y - yhat) ** 2)) / total:.3f}")
    if dropped:
        lines.append(f"{dropped} non-finite rows not shown")
    return "\n".join(lines)


def parity_plot(
    y: np.ndarray,
    yhat: np.ndarray,
    path: str | os.PathLike,
    title: str,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
) -> Path:
    """Predicted vs true with the y = x line; optional [lo, hi] interval bars."""
    y, yhat = np.asarray(y, dtype=np.float64).ravel(), np.asarray(yhat, dtype=np.float64).ravel()
    if (lo is None) != (hi is None):
        raise ValueError("give both lo and hi, or neither")
    lo = None if lo is None else np.asarray(lo, dtype=np.float64).ravel()
    hi = None if hi is None else np.asarray(hi, dtype=np.float64).ravel()
    keep, dropped = _finite_pairs(y, yhat, lo, hi)
    if not keep.any():
        raise ValueError(f"parity plot {title!r}: no row with finite target and prediction")
    y, yhat = y[keep], yhat[keep]
    figure, axes = _new_figure()
    extent = [y, yhat]  # the axes span these values (only the bars actually drawn count)
    if lo is not None:
        lo, hi = lo[keep], hi[keep]
        shown = np.unique(np.linspace(0, y.size - 1, min(y.size, MAX_INTERVAL_BARS)).astype(int))
        # Bars are drawn from lo to hi around the point; clip in case yhat lies outside.
        below = np.clip(yhat[shown] - lo[shown], 0, None)
        above = np.clip(hi[shown] - yhat[shown], 0, None)
        label = "interval" if shown.size == y.size else f"interval ({shown.size} of {y.size})"
        axes.errorbar(y[shown], yhat[shown], yerr=[below, above], fmt="none",
                      ecolor="tab:gray", elinewidth=0.7, alpha=0.5, label=label)
        extent += [yhat[shown] - below, yhat[shown] + above]
    axes.scatter(y, yhat, color="tab:blue", label="prediction", **_point_style(y.size))
    values = np.concatenate(extent)
    low, high = float(values.min()), float(values.max())
    pad = 0.03 * (high - low) if high > low else 1.0
    axes.plot([low - pad, high + pad], [low - pad, high + pad], color="tab:red", linewidth=1, label="y = x")
    axes.set_xlim(low - pad, high + pad)
    axes.set_ylim(low - pad, high + pad)
    axes.set_aspect("equal")
    axes.set_xlabel("true value")
    axes.set_ylabel("predicted value")
    axes.set_title(title)
    axes.text(0.03, 0.97, _summary(y, yhat, dropped), transform=axes.transAxes, va="top", fontsize=9,
              bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def residual_plot(y: np.ndarray, yhat: np.ndarray, path: str | os.PathLike, title: str) -> Path:
    """Residual (true − predicted) against the prediction, with the zero line."""
    y, yhat = np.asarray(y, dtype=np.float64).ravel(), np.asarray(yhat, dtype=np.float64).ravel()
    keep, dropped = _finite_pairs(y, yhat)
    if not keep.any():
        raise ValueError(f"residual plot {title!r}: no row with finite target and prediction")
    y, yhat = y[keep], yhat[keep]
    figure, axes = _new_figure()
    axes.scatter(yhat, y - yhat, color="tab:blue", **_point_style(y.size))
    axes.axhline(0.0, color="tab:red", linewidth=1)
    axes.set_xlabel("predicted value")
    axes.set_ylabel("residual (true − predicted)")
    axes.set_title(title)
    axes.text(0.03, 0.97, _summary(y, yhat, dropped), transform=axes.transAxes, va="top", fontsize=9,
              bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    axes.grid(alpha=0.3)
    return _save(figure, path)


def prediction_plots(y: np.ndarray, yhat: np.ndarray, lo: np.ndarray, hi: np.ndarray, parity_path, residual_path,
                     parity_title: str, residual_title: str) -> list[Path]:
    """The parity plot (with interval bars where the interval is finite) and the residual plot of
    one evaluation; [] when no prediction is finite (a model that writes only invalid or
    out-of-range numbers): the metrics say so, and an evaluation must not be lost to a plot."""
    yhat = np.asarray(yhat, dtype=np.float64)
    if not np.isfinite(yhat).any():
        return []
    bars = bool((np.isfinite(lo) & np.isfinite(hi) & np.isfinite(yhat)).any())
    return [parity_plot(y, yhat, parity_path, parity_title, lo=lo if bars else None, hi=hi if bars else None),
            residual_plot(y, yhat, residual_path, residual_title)]

"""What `rlreg tune` makes of a finished Ray Tune ResultGrid: one row per trial, the best trial,
and plots (validation curves per trial; reward × group-size heatmap of the final metric)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

HEATMAP_KEYS = ("reward.fn", "rl.group_size")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def collect_rows(grid, keys: list[str], metric: str, mode: str, steps: int) -> tuple[list[dict], dict]:
    """Rows (trial, swept values, status, last/best metric, final test metrics) and per-trial
    curves {trial: [(rl_step, metric), ...]} from every report the trial made."""
    rows, curves = [], {}
    for result in grid:
        metrics = result.metrics or {}
        trial = metrics.get("trial_id") or Path(result.path).name
        history: list[tuple[int, float]] = []
        frame = result.metrics_dataframe
        if frame is not None and metric in frame and "rl_step" in frame:
            part = frame[["rl_step", metric]].dropna()
            history = [(int(s), float(v)) for s, v in zip(part["rl_step"], part[metric])]
        curves[trial] = history
        step = metrics.get("rl_step")
        if result.error is not None:
            status = "error"
        elif _finite(step) and step >= steps:
            status = "finished"
        else:
            status = "stopped early"  # ASHA (or the time budget) ended it
        values = [v for _, v in history if math.isfinite(v)]
        row = {"trial": trial, **{k: result.config.get(k) for k in keys}, "status": status,
               "rl_step": int(step) if _finite(step) else None, metric: metrics.get(metric),
               f"best_{metric}": (min(values) if mode == "min" else max(values)) if values else None,
               "wall_s": int(round(metrics["time_total_s"])) if _finite(metrics.get("time_total_s")) else None}
        row.update({k: v for k, v in metrics.items() if k.startswith(("test_eval_", "val_eval_"))})
        if result.error is not None:
            row["error"] = f"{type(result.error).__name__}: {result.error}"[:500]
        rows.append(row)
    return rows, curves


def pick_best(rows: list[dict], metric: str, mode: str, steps: int) -> dict | None:
    """Best final metric among trials that finished all RL steps; among all trials if none did."""
    scored = [r for r in rows if _finite(r.get(metric)) and r["status"] != "error"]
    finished = [r for r in scored if r["status"] == "finished"]
    pool = finished or scored
    if not pool:
        return None
    return (min if mode == "min" else max)(pool, key=lambda r: r[metric])


def _label(trial: str, row: dict | None, keys: list[str]) -> str:
    if not row:
        return trial
    return f"{trial}: " + ", ".join(f"{k.split('.')[-1]}={row.get(k)}" for k in keys)


def plot_curves(curves: dict, rows: list[dict], keys: list[str], path: Path, metric: str) -> Path | None:
    """Validation metric vs RL step, one line per trial (step 0: the model RL started from)."""
    if not any(curves.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    by_trial = {r["trial"]: r for r in rows}
    fig, ax = plt.subplots(figsize=(8, 5))
    for trial, history in sorted(curves.items()):
        if history:
            steps, values = zip(*history)
            ax.plot(steps, values, marker="o", markersize=3, label=_label(trial, by_trial.get(trial), keys))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("RL step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (a line ending early: stopped by the scheduler)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_heatmap(rows: list[dict], keys: list[str], path: Path, metric: str) -> Path | None:
    """Final metric by reward function × group size (mean over the trials of a cell), when both are swept."""
    if not all(k in keys for k in HEATMAP_KEYS):
        return None
    cells: dict[tuple, list[float]] = {}
    for row in rows:
        if _finite(row.get(metric)) and row["status"] != "error":
            cells.setdefault((str(row[HEATMAP_KEYS[0]]), row[HEATMAP_KEYS[1]]), []).append(row[metric])
    if not cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fns = sorted({fn for fn, _ in cells})
    sizes = sorted({g for _, g in cells})
    grid = np.full((len(fns), len(sizes)), np.nan)
    for (fn, g), values in cells.items():
        grid[fns.index(fn), sizes.index(g)] = float(np.mean(values))
    fig, ax = plt.subplots(figsize=(1.6 * len(sizes) + 3, 0.7 * len(fns) + 2))
    image = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    low, high = np.nanmin(grid), np.nanmax(grid)
    for i in range(len(fns)):
        for j in range(len(sizes)):
            if np.isfinite(grid[i, j]):
                # viridis_r is light at the low end: dark text there, light text on dark cells
                light_cell = high == low or (grid[i, j] - low) / (high - low) < 0.5
                ax.text(j, i, f"{grid[i, j]:.4g}", ha="center", va="center", fontsize=9,
                        color="black" if light_cell else "white")
    ax.set_xticks(range(len(sizes)), [str(g) for g in sizes])
    ax.set_yticks(range(len(fns)), fns)
    ax.set_xlabel("rl.group_size")
    ax.set_ylabel("reward.fn")
    ax.set_title(f"final {metric} (last report; early-stopped trials at their last step)", fontsize=9)
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

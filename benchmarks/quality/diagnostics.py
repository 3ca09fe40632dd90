"""What happened inside each RL run of the quality benchmark, step by step, so a reader sees why RL
helped or not: the training batch's reward, advantage spread, invalid rate and sampled RMSE (from
the step's own stats), and every `every` steps a probe on a fixed slice of validation rows —
greedy-decode RMSE vs sampled RMSE (per sample and of the mean of the samples), invalid rate and
the policy's entropy per answer token.

Entropy is estimated from the samples' own log-probabilities (−mean log p of the sampled tokens,
nats per answer position): unbiased for the entropy of the constrained sampling distribution at
temperature 1, and free (the engine returns the log-probabilities with the samples)."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

STEP_KEYS = ("reward_mean", "reward_std", "advantage_std", "invalid_rate", "train_rmse_samples", "lr",
             "filtered_fraction", "entropy", "time_rollout", "time_learn")
PANELS = (("reward_mean", "train reward (mean)"), ("advantage_std", "advantage std"),
          ("entropy", "entropy (nats / answer token, val probe)"), ("invalid_rate", "invalid rate (train batch)"),
          ("greedy_rmse", "val RMSE: greedy (solid) vs sampled mean-of-K (dashed)"))


def _f(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _rmse(pred: np.ndarray, y: np.ndarray) -> float | None:
    ok = np.isfinite(pred)
    return float(np.sqrt(np.mean((pred[ok] - y[ok]) ** 2))) if ok.any() else None


class RLDiagnostics:
    """Collects the per-step stats (use `on_step` as train_rl's callback) and the validation probes."""

    def __init__(self, runner, every: int, val_rows: int, samples: int, chunk: int = 64):
        self.runner, self.every, self.samples, self.chunk = runner, max(1, int(every)), int(samples), chunk
        n_val = len(runner.task.y["val"])
        self.rows = np.arange(min(n_val, int(val_rows)))  # the same rows at every probe
        self.steps: list[dict] = []
        self.probes: list[dict] = []

    def probe(self, step: int) -> None:
        task, rollout = self.runner.task, self.runner.rollout
        inputs, y = task.inputs("val", self.rows), task.y["val"][self.rows]
        greedy = rollout.sample(inputs, task.allowed_hf, 1, 0.0, chunk=self.chunk)
        g_values, _ = task.decode(greedy.token_ids)
        drawn = rollout.sample(inputs, task.allowed_hf, self.samples, 1.0, chunk=self.chunk)
        values, valid = task.decode(drawn.token_ids)
        values = np.where(valid, values, np.nan).reshape(len(y), -1)
        with np.errstate(invalid="ignore"):
            mean_k = np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=1) \
                if np.isfinite(values).any() else np.full(len(y), np.nan)
        per_sample = values - y[:, None]
        ok = np.isfinite(per_sample)
        logp = np.asarray(drawn.logprobs, dtype=np.float64)
        self.probes.append({
            "step": int(step), "rows": int(len(y)),
            "greedy_rmse": _rmse(g_values.reshape(-1), y),
            "sampled_rmse": float(np.sqrt(np.mean(per_sample[ok] ** 2))) if ok.any() else None,
            "mean_of_k_rmse": _rmse(mean_k, y), "k": self.samples,
            "invalid_rate": float(1.0 - np.mean(valid)),
            "entropy": _f(-logp[np.isfinite(logp)].mean()) if np.isfinite(logp).any() else None})

    def on_step(self, step: int, stats: dict) -> None:
        self.steps.append({"step": int(step), **{k: _f(stats.get(k)) for k in STEP_KEYS if k in stats}})
        if step % self.every == 0 or step == self.runner.cfg.rl.steps:
            self.probe(step)

    def result(self) -> dict:
        return {"every": self.every, "val_rows": int(len(self.rows)), "samples": self.samples,
                "steps": self.steps, "probes": self.probes}


def summary(rows: list[dict]) -> dict:
    """Per dataset and method: the start and end of each curve, averaged over splits (the plot shows
    every split). rows: {"dataset", "split", "method", "diagnostics": RLDiagnostics.result()}."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[r["dataset"]][r["method"]].append(r["diagnostics"])
    out: dict = {}
    for ds, methods in sorted(acc.items()):
        out[ds] = {}
        for m, runs in methods.items():
            def ends(key: str, where: str) -> list[float | None]:
                vals = []
                for d in runs:
                    seq = [p.get(key) for p in d[where] if p.get(key) is not None]
                    vals.append((seq[0], seq[-1]) if seq else None)
                return vals

            row = {"n_runs": len(runs)}
            for key, where in (("reward_mean", "steps"), ("advantage_std", "steps"), ("invalid_rate", "steps"),
                               ("greedy_rmse", "probes"), ("mean_of_k_rmse", "probes"), ("sampled_rmse", "probes"),
                               ("entropy", "probes")):
                pairs = [p for p in ends(key, where) if p is not None]
                row[key] = {"first": float(np.mean([a for a, _ in pairs])) if pairs else None,
                            "last": float(np.mean([b for _, b in pairs])) if pairs else None}
            out[ds][m] = row
    return out


def plot(rows: list[dict], directory: str | Path) -> list[str]:
    """One figure per dataset: a panel per diagnostic, one colour per RL method, a line per split."""
    from benchmarks.quality.stats import _grid, _save

    by_ds: dict = defaultdict(list)
    for r in rows:
        by_ds[r["dataset"]].append(r)
    paths = []
    for ds, runs in sorted(by_ds.items()):
        fig, axes = _grid(len(PANELS))
        methods = sorted({r["method"] for r in runs})
        colours = {m: f"C{i}" for i, m in enumerate(methods)}
        for ax, (key, title) in zip(axes, PANELS):
            for r in runs:
                d, c = r["diagnostics"], colours[r["method"]]
                label = r["method"] if r["split"] == min(x["split"] for x in runs if x["method"] == r["method"]) else None
                where = "probes" if key in ("entropy", "greedy_rmse") else "steps"
                pts = [(p["step"], p[key]) for p in d[where] if p.get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts), color=c, lw=1, alpha=0.8, label=label)
                if key == "greedy_rmse":
                    pts = [(p["step"], p["mean_of_k_rmse"]) for p in d["probes"] if p.get("mean_of_k_rmse") is not None]
                    if pts:
                        ax.plot(*zip(*pts), color=c, lw=1, ls="--", alpha=0.8)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("RL step")
            ax.grid(alpha=0.3)
        if axes[0].lines:
            axes[0].legend(fontsize="small")
        fig.suptitle(f"{ds}: RL diagnostics (a line per split)")
        paths.append(_save(fig, Path(directory) / f"rl_diagnostics_{ds.replace(':', '_')}.png"))
    return paths

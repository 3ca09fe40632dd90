"""Evaluate a model by sampling: K constrained samples per input through a vLLM rollout worker,
aggregated (the aggregation chosen on validation), scored with CIs, plotted."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlreg.errors import ConfigError


@dataclass
class EvalConfig:
    samples: int = 32  # K per input (the paper evaluates with 128)
    temperature: float = 1.0
    aggregation: str = "auto"  # auto (best on validation) | mean | median | trimmed_mean
    chunk_inputs: int = 64  # inputs per engine call: bounds each remote wait
    n_boot: int = 1000
    plots: bool = True

    def validate(self) -> None:
        if self.samples < 1 or self.chunk_inputs < 1:
            raise ConfigError("eval.samples and eval.chunk_inputs must be >= 1")
        if self.aggregation not in ("auto", "mean", "median", "trimmed_mean"):
            raise ConfigError(f"eval.aggregation must be auto, mean, median or trimmed_mean, got {self.aggregation!r}")


def sample_values(rollout, task, split: str, k: int, temperature: float,
                  chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """values [N, K] in original units and validity [N, K] for a split, sampled through a RolloutGroup."""
    samples = rollout.sample(task.inputs(split), task.allowed_hf, k, temperature, chunk=chunk)
    return task.decode(samples.token_ids)


def evaluate_model(rollout, task, eval_cfg: EvalConfig, out_dir: Path | None = None, label: str = "") -> dict:
    from rlreg.evaluate.aggregate import aggregate, choose_aggregation, sample_interval
    from rlreg.evaluate.metrics import evaluate_samples

    results: dict = {}
    drawn = {split: sample_values(rollout, task, split, eval_cfg.samples, eval_cfg.temperature,
                                  eval_cfg.chunk_inputs) for split in ("val", "test")}
    how = eval_cfg.aggregation
    if how == "auto":
        how = choose_aggregation(*drawn["val"], task.y["val"])
    for split, (values, valid) in drawn.items():
        results[split] = evaluate_samples(values, valid, task.y[split], how, task.scaler.to_z, n_boot=eval_cfg.n_boot)
    if out_dir is not None and eval_cfg.plots:
        from rlreg.evaluate.plots import parity_plot, residual_plot

        values, valid = drawn["test"]
        yhat = aggregate(values, valid, how)
        lo, hi = sample_interval(values, valid, alpha=0.1)
        name = f"{label}_" if label else ""
        parity_plot(task.y["test"], yhat, Path(out_dir) / f"{name}parity_test.png",
                    f"{task.dataset.name} test ({label or 'model'}, {how} of {eval_cfg.samples})", lo=lo, hi=hi)
        residual_plot(task.y["test"], yhat, Path(out_dir) / f"{name}residuals_test.png",
                      f"{task.dataset.name} test residuals ({label or 'model'})")
    return results


def classical_baselines(task, names=("hgb", "ridge")) -> dict:
    """HistGradientBoosting and Ridge on the same splits, scored like the model (test and val)."""
    from rlreg.evaluate.baselines import fit_predict_baseline, text_features
    from rlreg.evaluate.metrics import evaluate_point

    ds = task.dataset
    idx = {s: getattr(ds.splits, s) for s in ("train", "val", "test")}
    if ds.kind == "text":
        train_x, rest = text_features([ds.texts[i] for i in idx["train"]],
                                      [ds.texts[i] for s in ("val", "test") for i in idx[s]])
        X = {"train": train_x, "val": rest[: len(idx["val"])], "test": rest[len(idx["val"]):]}
    else:
        X = {s: ds.features[i] for s, i in idx.items()}
    out = {}
    for name in names:
        out[name] = {s: evaluate_point(fit_predict_baseline(name, X["train"], task.y["train"], X[s]), task.y[s])
                     for s in ("val", "test")}
    return out

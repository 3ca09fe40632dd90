"""Evaluate a model by sampling: K constrained samples per input through a vLLM rollout worker,
aggregated (the aggregation chosen on validation), scored with CIs, plotted."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rlreg import console
from rlreg.baselines.classical import classical_predictions
from rlreg.evaluate.aggregate import aggregate, choose_aggregation, effective_mask
from rlreg.evaluate.calibration import (Calibration, check_alphas, fit_calibration, interval_report,
                                        prediction_interval)
from rlreg.evaluate.config import EvalConfig
from rlreg.evaluate.metrics import evaluate_point, evaluate_samples
from rlreg.rundir import RunDir


def sample_values(rollout, task, split: str, k: int, temperature: float,
                  chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """values [N, K] in original units and validity [N, K] for a split, sampled through a RolloutGroup."""
    samples = rollout.sample(task.inputs(split), task.allowed_hf, k, temperature, chunk=chunk)
    return task.decode(samples.token_ids)


def summarise(values: np.ndarray, valid: np.ndarray, aggregation: str, alpha: float,
              calibration: Calibration | None = None) -> dict[str, np.ndarray]:
    """prediction, lower, upper and samples_valid per row; the interval is the calibrated one when
    a calibration is given, else the central 1 − alpha sample interval."""
    lower, upper = prediction_interval(values, valid, alpha, calibration)
    return {"prediction": aggregate(values, valid, aggregation), "lower": lower, "upper": upper,
            "samples_valid": effective_mask(values, valid).sum(axis=1)}


def calibrate(values: np.ndarray, valid: np.ndarray, y: np.ndarray, how: str) -> Calibration | None:
    """The split-conformal calibration of these validation samples; None when no row decoded
    (a collapsed policy still gets its report, without calibrated intervals)."""
    if not effective_mask(values, valid).any():
        return None
    return fit_calibration(values, valid, y, how)


def evaluate_model(rollout, task, eval_cfg: EvalConfig, out_dir: Path | None = None, label: str = "",
                   alphas=None) -> dict:
    """{"val", "test": metrics (with "intervals": raw and calibrated coverage and width per alpha),
    "calibration": fitted on val (Calibration.to_dict) or None}. alphas: besides 0.1."""
    alphas = check_alphas(alphas)
    results: dict = {}
    drawn = {split: sample_values(rollout, task, split, eval_cfg.samples, eval_cfg.temperature,
                                  eval_cfg.chunk_inputs) for split in ("val", "test")}
    how = eval_cfg.aggregation
    if how == "auto":
        how = choose_aggregation(*drawn["val"], task.y["val"])
    calibration = calibrate(*drawn["val"], task.y["val"], how)
    for split, (values, valid) in drawn.items():
        results[split] = evaluate_samples(values, valid, task.y[split], how, task.scaler.to_z, n_boot=eval_cfg.n_boot)
        # on val the calibrated coverage is in-sample (≈ 1 − alpha by construction); test is the check
        results[split]["intervals"] = interval_report(values, valid, task.y[split], calibration, alphas)
    results["calibration"] = None if calibration is None else calibration.to_dict()
    if out_dir is not None and eval_cfg.plots:
        from rlreg.evaluate.plots import prediction_plots

        values, valid = drawn["test"]
        yhat = aggregate(values, valid, how)
        lo, hi = prediction_interval(values, valid, 0.1, calibration)
        name, run = f"{label}_" if label else "", RunDir(out_dir)
        drawn_plots = prediction_plots(
            task.y["test"], yhat, lo, hi, run.plot(f"{name}parity_test"), run.plot(f"{name}residuals_test"),
            f"{task.dataset.name} test ({label or 'model'}, {how} of {eval_cfg.samples})",
            f"{task.dataset.name} test residuals ({label or 'model'})")
        if not drawn_plots:
            console.warn(f"{label or 'model'}: no finite test prediction, so no parity or residual plot")
    return results


def run_baselines(task, cfg) -> dict:
    """The configured baselines (eval.baselines) on the same splits, scored like the model."""
    predictions = classical_predictions(task, [b for b in cfg.eval.baselines if b != "reghead"])
    if "reghead" in cfg.eval.baselines:
        from rlreg.baselines.reghead import train_regression_head

        sft = cfg.sft
        predictions["reghead"] = train_regression_head(task, sft.steps, sft.batch_size, sft.lr, sft.eval_every,
                                                       sft.patience, cfg.seed)
    return score_predictions(task, predictions)


def classical_baselines(task, names=("hgb", "ridge")) -> dict:
    """HistGradientBoosting and Ridge, scored on val and test."""
    return score_predictions(task, classical_predictions(task, names))


def score_predictions(task, predictions: dict) -> dict:
    return {name: {s: evaluate_point(pred[s], task.y[s]) for s in ("val", "test")}
            for name, pred in predictions.items()}

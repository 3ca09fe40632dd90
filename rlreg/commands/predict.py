"""`rlreg predict`: a checkpoint directory + new rows (CSV or JSONL) → predictions with intervals.

The checkpoint carries everything needed to read new rows (rlreg.model.checkpoint), so new rows
are rendered by the very code that rendered the training prompts, and K constrained samples per
row are drawn through a RolloutGroup and aggregated as in evaluation."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from rlreg.actors.rollout import RolloutGroup
from rlreg.actors.session import ensure_ray
from rlreg.config import load_config
from rlreg.data.rows import read_rows, write_rows
from rlreg.errors import ConfigError, DataError
from rlreg.evaluate.aggregate import AGGREGATIONS
from rlreg.evaluate.calibration import check_alpha, stored_calibration
from rlreg.evaluate.sampling import sample_values, summarise
from rlreg.model.checkpoint import Checkpoint, load_checkpoint
from rlreg.rundir import RunDir
from rlreg.train.task import PREDICT, task_for_rows

PREDICTION_COLUMNS = ("prediction", "lower", "upper", "samples_valid")
# Dotted overrides predict takes: where and how to sample, never what the model was trained on.
OVERRIDE_SECTIONS = ("engine.", "ray.", "eval.chunk_inputs")


def resolve_aggregation(checkpoint: Checkpoint, given: str | None) -> tuple[str, str]:
    """(aggregation, where it came from): given > task.json > the run's validation choice in
    metrics.json next to the checkpoint > mean (choose_aggregation's tie-break default)."""
    if given:
        return given, "given"
    if checkpoint.info.get("aggregation"):
        return checkpoint.info["aggregation"], "task.json"
    metrics = RunDir(checkpoint.model_dir.parent).metrics
    try:
        payload = json.loads(metrics.read_text())
        if Path(str(payload.get("checkpoint", ""))).name == checkpoint.model_dir.name:
            return payload["val"]["aggregation"], f"validation ({metrics})"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "mean", "default"




def _sampling_config(overrides: Sequence[str]):
    for text in overrides:
        if not text.startswith(OVERRIDE_SECTIONS):
            raise ConfigError(f"predict override {text!r}: only {', '.join(OVERRIDE_SECTIONS)} settings apply "
                              f"(the rest comes from the checkpoint)")
    return load_config(None, list(overrides))


def run_predict(checkpoint_dir: str | Path, input_path: str | Path, output_path: str | Path, *,
                samples: int = 32, alpha: float = 0.1, aggregation: str | None = None,
                temperature: float | None = None, overrides: Sequence[str] = (), rollout=None) -> dict:
    """Predict every row of input_path into output_path; returns a summary. `rollout`: an existing
    RolloutGroup on this checkpoint (else one is started and stopped here)."""
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    alpha = check_alpha(alpha, "--alpha")
    if aggregation is not None and aggregation not in AGGREGATIONS:
        raise ConfigError(f"--aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    cfg = _sampling_config(overrides)
    checkpoint = load_checkpoint(checkpoint_dir)
    rows = read_rows(input_path)
    extra = [c for c in rows.columns if c not in checkpoint.input_columns]
    clash = [c for c in extra if c in PREDICTION_COLUMNS]
    if clash:
        raise DataError(f"{rows.label}: column(s) {', '.join(map(repr, clash))} would be overwritten by the "
                        f"output columns {', '.join(PREDICTION_COLUMNS)}; rename them")
    task = task_for_rows(checkpoint, rows)  # bad rows fail here, before an engine starts
    how, source = resolve_aggregation(checkpoint, aggregation)
    calibration = stored_calibration(checkpoint)  # read before an engine starts: a bad one fails fast
    temp = float(checkpoint.info.get("temperature", 1.0) if temperature is None else temperature)
    own = rollout is None
    if own:
        ensure_ray(cfg.ray)
        rollout = RolloutGroup(checkpoint.model_dir, cfg.engine, checkpoint.meta.max_positions, cfg.ray)
    try:
        values, valid = sample_values(rollout, task, PREDICT, samples, temp, cfg.eval.chunk_inputs)
    finally:
        if own:
            rollout.shutdown()
    result = summarise(values, valid, how, alpha, calibration)
    records = [{**{c: row.get(c) for c in extra}, **{k: v[i] for k, v in result.items()}}
               for i, row in enumerate(rows.values)]
    write_rows(output_path, extra + list(PREDICTION_COLUMNS), records)
    return {"rows": len(records), "output": str(output_path), "samples": samples, "temperature": temp,
            "aggregation": how, "aggregation_from": source, "alpha": alpha,
            "rows_without_valid": int((result["samples_valid"] == 0).sum()),
            "interval": "calibrated" if calibration is not None else "sample",
            # conformal coverage holds for the K it was calibrated with; another K only approximately
            "calibrated_samples": None if calibration is None else calibration.samples,
            "calibration_quantile": None if calibration is None else calibration.quantile(alpha)}


def run(args: argparse.Namespace) -> int:
    out = run_predict(args.checkpoint, args.input, args.output, samples=args.samples, alpha=args.alpha,
                      aggregation=args.aggregation, temperature=args.temperature, overrides=args.overrides)
    print(f"wrote {out['rows']} rows to {out['output']} ({out['samples']} samples each, "
          f"{out['aggregation']} from {out['aggregation_from']}, {1 - out['alpha']:.0%} intervals)")
    if out["interval"] == "calibrated":
        print(f"lower/upper: split-conformal calibrated on the run's validation split "
              f"(K = {out['calibrated_samples']} there, quantile {out['calibration_quantile']:.3g} x sample std)")
        if out["calibrated_samples"] != out["samples"]:
            print(f"note: calibrated with K = {out['calibrated_samples']}, sampled with K = {out['samples']}: "
                  f"coverage is approximate", file=sys.stderr)
    else:
        print("lower/upper: the raw sample quantiles (this checkpoint holds no calibration)")
    if out["rows_without_valid"]:
        print(f"warning: {out['rows_without_valid']} rows had no valid sample (empty prediction)", file=sys.stderr)
    return 0

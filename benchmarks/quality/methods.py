"""One (dataset, split) of the quality benchmark: build the task once, train and score every method.

All LM methods share the task (model built once, scaler fitted on train); the RL methods start
from this split's CE checkpoint. Scores are test metrics in the dataset's score space, with the
test-set bootstrap CI of each run; a method that fails is recorded with its error and the others
go on."""
from __future__ import annotations

import copy
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.quality.presets import METHOD_OVERRIDES, RL_METHODS


def run_config(preset: dict, dataset: dict, split: int, method: str, run_dir: Path):
    """The validated RunConfig of one method on one (dataset, split)."""
    from rlreg.config import RunConfig
    from rlreg.configlib import from_mapping

    mapping = copy.deepcopy(preset["base"])
    mapping["data"] = {**dataset["data"], dataset["split_key"]: split}
    mapping["numbers"] = dict(dataset["numbers"])
    mapping["model"] = {**mapping.get("model", {}), **dataset.get("model", {})}
    # the paper preset's per-dataset supervised settings (its tune search), shared by every LM method
    mapping["sft"] = {**mapping.get("sft", {}), **dataset.get("sft", {})}
    for section, values in preset.get("method_overrides", METHOD_OVERRIDES).get(method, {}).items():
        values = dict(values)
        scale = values.pop("lr_scale", None)  # relative to the preset's rate, not a config key
        target = mapping.setdefault(section, {})
        target.update(values)
        if scale is not None:
            target["lr"] = target["lr"] * scale
    mapping.update(run_dir=str(run_dir), seed=split)
    return from_mapping(RunConfig, mapping)


def _to_space(values: np.ndarray, space: str) -> np.ndarray:
    if space == "log1p":  # cardinalities: the error that matters is relative
        with np.errstate(invalid="ignore"):
            return np.log1p(np.maximum(values, 0.0))
    return values


class SplitRun:
    """Scores every method of a preset on one (dataset, split)."""

    def __init__(self, preset: dict, dataset: dict, split: int, work_dir: Path):
        from rlreg.train.task import prepare_task

        self.preset, self.dataset, self.split = preset, dataset, split
        self.space = dataset["score_space"]
        self.work_dir = Path(work_dir)
        self.cfg = run_config(preset, dataset, split, "CE", self.work_dir / "task")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.task = prepare_task(self.cfg, self.work_dir / "task")  # checks every split has rows
        y = self.task.y
        self.y_test = _to_space(y["test"], self.space)
        mean_pred = np.full_like(self.y_test, np.mean(_to_space(y["train"], self.space)))
        self.scale = float(np.sqrt(np.mean((self.y_test - mean_pred) ** 2)))  # the train-mean predictor
        self.ce_dir: Path | None = None

    # -- scoring ------------------------------------------------------------------------------
    def _point_record(self, pred: dict) -> dict:
        from rlreg.evaluate.metrics import evaluate_point

        m = evaluate_point(_to_space(pred["test"], self.space), self.y_test, n_boot=self.cfg.eval.n_boot,
                           nan_policy="omit")
        return {"rmse": m["rmse"], "rmse_ci": m["rmse_ci"], "mae": m["mae"], "r2": m["r2"]}

    def _sampled_record(self, rollout) -> tuple[dict, list[dict]]:
        from rlreg.evaluate.aggregate import aggregate, choose_aggregation
        from rlreg.evaluate.calibration import interval_report
        from rlreg.evaluate.metrics import evaluate_samples
        from rlreg.evaluate.sampling import calibrate, sample_values

        ev, ks = self.cfg.eval, self.preset["ks"]
        val, val_ok = sample_values(rollout, self.task, "val", ev.samples, ev.temperature, ev.chunk_inputs)
        how = choose_aggregation(_to_space(val, self.space), val_ok, _to_space(self.task.y["val"], self.space))
        test, test_ok = sample_values(rollout, self.task, "test", max(ks), ev.temperature, ev.chunk_inputs)
        test = _to_space(test, self.space)
        m = evaluate_samples(test, test_ok, self.y_test, how, n_boot=ev.n_boot)
        # split conformal on val, in the score space; exact when val and test use the same K
        calibration = calibrate(_to_space(val, self.space), val_ok, _to_space(self.task.y["val"], self.space), how)
        intervals = interval_report(test, test_ok, self.y_test, calibration, [0.1])["0.1"]
        cal = intervals["calibrated"] or {}
        record = {"rmse": m["rmse"], "rmse_ci": m["rmse_ci"], "mae": m["mae"], "r2": m["r2"], "crps": m["crps"],
                  "coverage90": m["coverage90"], "width90": m["width90"], "coverage90_calibrated": cal.get("coverage"),
                  "width90_calibrated": cal.get("width"), "calibration_q90": cal.get("q"),
                  "calibration_method": calibration.method if calibration else None,
                  "calibration_offset": calibration.offset if calibration else None,
                  "k_val": int(val.shape[1]), "k_test": int(test.shape[1]),
                  "invalid_rate": m["invalid_rate"], "aggregation": how}
        curve = []
        for k in ks:  # the first k of the same draws: RMSE vs samples per input
            yhat = aggregate(test[:, :k], test_ok[:, :k], how)
            ok = np.isfinite(yhat)
            rmse = float(np.sqrt(np.mean((yhat[ok] - self.y_test[ok]) ** 2))) if ok.any() else float("nan")
            curve.append({"k": k, "rmse": rmse, "n_scored": int(ok.sum())})
        return record, curve

    # -- methods ------------------------------------------------------------------------------
    def classical(self, method: str) -> tuple[dict, list]:
        from rlreg.evaluate.sampling import classical_predictions

        name = {"Ridge": "ridge", "HGB": "hgb"}[method]
        return self._point_record(classical_predictions(self.task, [name])[name]), []

    def reghead(self, method: str) -> tuple[dict, list]:
        from rlreg.baselines.reghead import train_regression_head

        sft = self.cfg.sft
        pred = train_regression_head(self.task, sft.steps, sft.batch_size, sft.lr, sft.eval_every, sft.patience,
                                     self.cfg.seed)
        return self._point_record(pred), []

    def supervised(self, method: str) -> tuple[dict, list]:
        from rlreg.actors.rollout import RolloutGroup
        from rlreg.train.sft import run_sft

        cfg = run_config(self.preset, self.dataset, self.split, method, self.work_dir / method)
        out = Path(cfg.run_dir)
        out.mkdir(parents=True, exist_ok=True)
        model_dir = run_sft(cfg, self.task, out)
        if method == "CE":
            self.ce_dir = model_dir
        rollout = RolloutGroup(model_dir, cfg.engine, cfg.model.max_positions, cfg.ray)
        try:
            return self._sampled_record(rollout)
        finally:
            rollout.shutdown()

    def reinforce(self, method: str) -> tuple[dict, list]:
        from benchmarks.quality.diagnostics import RLDiagnostics
        from rlreg.train.rl import RLRunner, train_rl

        if self.ce_dir is None:
            raise RuntimeError("the CE run of this split failed or did not run; RL starts from it")
        cfg = run_config(self.preset, self.dataset, self.split, method, self.work_dir / method)
        out = Path(cfg.run_dir)
        out.mkdir(parents=True, exist_ok=True)
        runner = RLRunner(cfg, self.task, self.ce_dir, out)
        try:
            diag = None
            if self.preset.get("diagnostics"):
                d = self.preset["diagnostics"]
                diag = RLDiagnostics(runner, d["every"], d["val_rows"], d["samples"], cfg.eval.chunk_inputs)
                diag.probe(0)  # the CE model: where every curve starts
            train_rl(runner, on_step=None if diag is None else diag.on_step)
            record, curve = self._sampled_record(runner.rollout)
            if diag is not None:
                record["diagnostics"] = diag.result()
            return record, curve
        finally:
            runner.shutdown()

    def settings(self, method: str) -> dict:
        """The budget this run had (the JSON holds every setting; these are the ones that vary)."""
        if method in ("Ridge", "HGB"):
            return {"defaults": "sklearn"}
        cfg = run_config(self.preset, self.dataset, self.split, method, self.work_dir / method)
        out = {"sft": {k: getattr(cfg.sft, k) for k in ("loss", "lr", "batch_size", "steps", "eval_every", "patience")}}
        if method in RL_METHODS:
            rl = cfg.rl
            out["rl"] = {"advantage": rl.advantage, "lr": rl.lr, "steps": rl.steps, "batch_size": rl.batch_size,
                         "group_size": rl.group_size, "expert_ce_coef": rl.expert_ce_coef,
                         "std_filter_tol": rl.std_filter_tol, "completions": rl.steps * rl.batch_size * rl.group_size,
                         "warmup_fraction": cfg.learner.warmup_fraction,
                         # what these completions are in epochs over train (the paper runs 100)
                         "epochs": rl.steps * rl.batch_size / len(self.task.y["train"])}
        if method not in ("RegHead",):
            out["eval"] = {"k": max(self.preset["ks"]), "k_val": cfg.eval.samples}
        return out

    def method_fn(self, method: str) -> Callable[[str], tuple[dict, list]]:
        if method in ("Ridge", "HGB"):
            return self.classical
        if method == "RegHead":
            return self.reghead
        if method in ("CE", "CE+NTL"):
            return self.supervised
        return self.reinforce

    def run(self, method: str) -> tuple[dict, list[dict]]:
        """One method's record (and sampling-curve rows); errors are recorded, not raised."""
        key = {"dataset": self.dataset["name"], "split": self.split, "method": method}
        started, code = time.monotonic(), code_version()  # at the start: actors import the code as it is now
        try:
            scores, curve = self.method_fn(method)(method)
            error = None
        except Exception as err:  # one failed method must not lose the others' results
            traceback.print_exc()
            return {**failed_record(key["dataset"], self.split, method, err), "scale": self.scale, "code": code,
                    "score_space": self.space, "wall_s": round(time.monotonic() - started, 1)}, []
        record = {**key, **scores, "scale": self.scale, "n_test": int(len(self.y_test)), "code": code,
                  "n_train": int(len(self.task.y["train"])), "settings": self.settings(method),
                  "score_space": self.space, "wall_s": round(time.monotonic() - started, 1), "error": None}
        return record, [{**key, **row} for row in curve]


def code_version() -> dict:
    """Which rlreg code a run used: the commit and a hash of the rlreg/ sources as they are on disk
    (the tree may be edited while a long preset runs over several sittings)."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for path in sorted((root / "rlreg").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"commit": commit, "rlreg_sources": digest.hexdigest()[:12]}


def failed_record(dataset: str, split: int, method: str, err: Exception) -> dict:
    nan = float("nan")
    return {"dataset": dataset, "split": split, "method": method, "rmse": nan, "rmse_ci": [nan, nan],
            "scale": nan, "wall_s": 0.0, "error": f"{type(err).__name__}: {err}"}

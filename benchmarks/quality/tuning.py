"""Per-dataset supervised (CE) hyperparameters for the paper preset, chosen by an `rlreg tune` search
on the validation split of the dataset's first split, then shared by every LM method of that
dataset (CE, CE+NTL, the RL methods through their CE start, and RegHead's budget).

`rlreg tune` runs RL trials; here each trial trains its own supervised stage (the space is sft.*
keys) and then one RL step at a learning rate of 1e-9, so its final validation RMSE is the CE
model's (sampled, rl.eval_samples per input, mean). The winner is what `rlreg tune` itself picks
(rlreg.tune.report.pick_best)."""
from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

from rlreg.errors import ConfigError

# What a trial's RL part does: the least that lets `rlreg tune` run and report, changing nothing.
TRIAL_RL = {"steps": 1, "batch_size": 8, "group_size": 2, "lr": 1e-9, "eval_every": 1, "expert_ce_coef": 0.0,
            "advantage": "remax", "std_filter_tol": None}


def check_tune_spec(spec: dict) -> None:
    """The preset's tune section: a grid over sft.* keys only (an RL key would not be shared)."""
    space = spec.get("space") or {}
    if not space:
        raise ConfigError("quality preset tune.space is empty")
    bad = [k for k in space if not k.startswith("sft.")]
    if bad:
        raise ConfigError(f"quality preset tune.space: {bad} are not sft.* keys; the search chooses the "
                          f"supervised hyperparameters shared by every LM method")


def trial_count(spec: dict) -> int:
    count = 1
    for value in spec["space"].values():
        ((_, values),) = value.items()
        count *= len(values)
    return count


def tune_config(preset: dict, dataset: dict, split: int, run_dir: Path):
    """The RunConfig `rlreg tune` runs for this dataset (see the module docstring)."""
    from benchmarks.quality.methods import run_config
    from rlreg.configlib import from_mapping, to_mapping

    spec = preset["tune"]
    check_tune_spec(spec)
    mapping = to_mapping(run_config(preset, dataset, split, "CE", run_dir))
    mapping["rl"].update(TRIAL_RL)
    mapping["tune"] = {"metric": "val_rmse", "mode": "min", "search": "grid", "scheduler": "none",
                       "num_samples": 1, "max_concurrent": 1, "final_eval": False, "space": copy.deepcopy(spec["space"])}
    return from_mapping(type(run_config(preset, dataset, split, "CE", run_dir)), mapping)


def tune_dataset(preset: dict, dataset: dict, split: int, work: Path) -> dict:
    """Run the search; returns the tune row for the records file: {dataset, split, chosen: {sft key:
    value}, trials: [...], wall_s}. Raises when no trial reported a score."""
    from benchmarks.quality.methods import code_version
    from rlreg.tune.sweep import run_tune

    started, code = time.monotonic(), code_version()
    shutil.rmtree(work, ignore_errors=True)  # a search cut short by an earlier invocation starts over
    cfg = tune_config(preset, dataset, split, Path(work))
    summary = run_tune(cfg)
    best = summary["best"]
    keys = list(preset["tune"]["space"])
    chosen = {k.split(".", 1)[1]: best[k] for k in keys}
    trials = [{**{k: r.get(k) for k in keys}, "val_rmse": r.get("val_rmse"), "status": r.get("status"),
               "wall_s": r.get("wall_s"), "error": r.get("error")} for r in summary["trials"]]
    failed = [t for t in trials if t["status"] == "error"]
    if failed:  # a search missing some of its grid is not the search the preset states: retry it whole
        raise RuntimeError(f"{len(failed)} of {len(trials)} CE-search trials failed, e.g. {failed[0]['error']}")
    return {"dataset": dataset["name"], "split": split, "chosen": chosen, "metric": "val_rmse (CE model, sampled)",
            "trials": trials, "n_trials": len(trials), "code": code,
            "wall_s": round(time.monotonic() - started, 1)}

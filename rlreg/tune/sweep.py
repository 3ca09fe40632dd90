"""`rlreg tune`: a Ray Tune sweep over the config's `tune.space`, each trial a full RL run.

The supervised stage runs once before the sweep and every trial starts RL from that checkpoint,
so trials differ only in what is swept — unless the space touches numbers.* / model.* / data.* /
sft.*, in which case each trial trains its own supervised stage. Trials report validation RMSE
every rl.eval_every RL steps (ASHA stops bad ones); each trial holds a placement group sized for
its actors, checked against the cluster before anything starts. Outputs in the run dir:
results.csv, best.yaml (runnable: `rlreg train best.yaml`), tune_summary.json and plots
(rlreg.tune.report)."""
from __future__ import annotations

import copy
import csv
import importlib.util
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import ray
import yaml
from ray import tune

from rlreg import device
from rlreg import console
from rlreg.actors.session import ensure_ray
from rlreg.config import RunConfig
from rlreg.configlib import from_mapping, to_mapping
from rlreg.errors import ConfigError, RlregError
from rlreg.evaluate.report import format_table, write_metrics_json
from rlreg.evaluate.sampling import evaluate_model
from rlreg.io import atomic_open, write_text
from rlreg.rundir import RunDir
from rlreg.train.pipeline import run_supervised
from rlreg.train.rl import RLRunner, train_rl
from rlreg.train.sft import run_sft
from rlreg.train.task import prepare_task
from rlreg.train.tracking import mlflow_uri, require, require_mlflow
from rlreg.tune.config import candidate_values, grid_size, needs_own_sft, set_dotted
from rlreg.tune.report import collect_rows, pick_best, plot_curves, plot_heatmap

FINAL_KEYS = ("rmse", "mae", "r2")


# -- checks before anything starts ------------------------------------------------------------------
def check_sweep(cfg) -> None:
    """Every swept value must give a valid RunConfig; the scheduler must fit rl.steps."""
    tcfg = cfg.tune
    if not tcfg.space:
        raise ConfigError("tune.space is empty: nothing to sweep (e.g. tune.space: {rl.lr: {loguniform: [1e-5, 1e-3]}})")
    base = to_mapping(cfg)
    for key, spec in tcfg.space.items():
        for value in candidate_values(spec):
            mapping = copy.deepcopy(base)
            set_dotted(mapping, key, value)
            try:
                from_mapping(RunConfig, mapping)
            except ConfigError as err:
                raise ConfigError(f"tune.space['{key}']: value {value!r} is not valid here: {err}") from err
    if tcfg.scheduler == "asha":
        if not cfg.rl.eval_every:
            raise ConfigError("tune.scheduler=asha needs rl.eval_every > 0 (trials report validation RMSE "
                              "every rl.eval_every RL steps); or set tune.scheduler=none")
        if tcfg.grace_period > cfg.rl.steps:
            raise ConfigError(f"tune.grace_period ({tcfg.grace_period}) must be <= rl.steps ({cfg.rl.steps})")
    if tcfg.search == "optuna" and importlib.util.find_spec("optuna") is None:
        raise ConfigError("tune.search=optuna needs the optuna package, which is not installed "
                          "(pip install optuna), or use tune.search=random")
    if not cfg.rl.enabled:
        raise ConfigError("rlreg tune runs RL trials: rl.enabled must be true")
    if cfg.ray.colocate:
        # A trial's actors live in the placement group Ray Tune reserves for it; colocation needs a
        # group of its own (one GPU bundle per engine/rank pair), which Ray cannot nest inside it.
        raise ConfigError("rlreg tune does not run colocated trials (ray.colocate: true): each trial needs its own GPUs "
                          "for engines and learner ranks; set ray.colocate=false for the sweep")


def trial_bundles(cfg) -> list[dict]:
    """[the trial process, all its actors]. The actors share one bundle: inside a placement group,
    actors placed with bundle index -1 go first-fit into single bundles, so per-actor bundles can
    fragment (a reward actor taking half a learner's bundle) and leave a rank unplaceable."""
    ray_cfg, workers, ranks = cfg.ray, cfg.rl.rollout_workers, cfg.learner.world_size
    gpu = device.has_cuda() or os.environ.get("RLREG_DEVICE", "").lower() == "gpu"
    actors: dict[str, float] = {"CPU": ray_cfg.rollout_cpus * workers + ray_cfg.reward_cpus * cfg.reward.workers
                                + ray_cfg.learner_cpus * ranks}
    if gpu:
        actors["GPU"] = float(workers * ray_cfg.rollout_gpus + ranks * ray_cfg.learner_gpus)
    for resources, count in ((ray_cfg.rollout_resources, workers), (ray_cfg.learner_resources, ranks)):
        for name, amount in resources.items():
            actors[name] = actors.get(name, 0.0) + float(amount) * count
    return [{"CPU": round(cfg.tune.trial_cpus, 4)}, {k: round(v, 4) for k, v in actors.items()}]


def check_fits(cfg, bundles: list[dict]) -> int:
    """Trials that fit at once (capped by tune.max_concurrent); ConfigError when not even one does.
    Ray Tune would otherwise keep such a trial pending forever."""
    want = cfg.tune.max_concurrent
    if not cfg.tune.check_resources:
        return want
    trial = {k: sum(b.get(k, 0.0) for b in bundles) for b in bundles for k in b}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    per_node = [min(math.floor(res.get(k, 0.0) / v + 1e-9) for k, v in trial.items() if v > 0) for res in nodes]
    at_once = sum(per_node)
    if at_once < 1:
        offered = "; ".join(", ".join(f"{k}={v:g}" for k, v in sorted(res.items()) if not k.startswith("node:")
                                      and k not in ("memory", "object_store_memory")) for res in nodes)
        raise ConfigError(
            f"a trial cannot fit this Ray cluster, so it would wait forever: each trial needs, on one node, "
            f"{_fmt(trial)} (the trial process {_fmt(bundles[0])} + rollout {cfg.rl.rollout_workers} × "
            f"{cfg.ray.rollout_cpus:g} CPU, reward {cfg.reward.workers} × {cfg.ray.reward_cpus:g} CPU, learner "
            f"{cfg.learner.world_size} × {cfg.ray.learner_cpus:g} CPU); the nodes offer: {offered or 'nothing'}. "
            f"Lower ray.rollout_cpus / ray.learner_cpus / ray.reward_cpus / tune.trial_cpus, reward.workers or "
            f"learner.world_size, or add nodes (tune.check_resources=false on an autoscaling cluster)")
    if at_once < want:
        console.say(f"tune: {want} concurrent trials requested, {at_once} fit the cluster "
              f"({_fmt(trial)} each): running {at_once} at a time")
    return min(want, at_once)


def _fmt(resources: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


# -- one trial (runs inside a Ray Tune trial actor) -------------------------------------------------
def _finite(stats: dict) -> dict:
    return {k: float(v) for k, v in stats.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def run_trial(cfg, report: Callable[[dict], None], final_eval: bool = True, worst: float = math.inf) -> dict:
    """One RL run (plus its own supervised stage when cfg.sft says so), reporting as it goes.
    `worst` replaces a NaN validation RMSE (no valid sample) so schedulers can still rank it."""
    shutil.rmtree(cfg.run_dir, ignore_errors=True)  # a retried trial (FailureConfig) starts clean
    run = RunDir.create(cfg, "trial")
    console.use_log_dir(run.logs)
    run_dir = run.path
    init = Path(cfg.sft.init_from) if cfg.sft.init_from else None
    task = prepare_task(cfg, run_dir, model_dir=init)
    start = run_sft(cfg, task, run_dir) if cfg.sft.enabled and init is None else task.model_dir
    last: dict = {}

    def on_step(step: int, stats: dict) -> None:
        last.clear()
        last.update(_finite(stats), rl_step=step)
        if "val_rmse" in stats and step < cfg.rl.steps:  # the last step reports after the final evaluation
            report({**last, "val_rmse": _or(stats["val_rmse"], worst)})

    runner = RLRunner(cfg, task, start, run_dir)
    try:
        if runner.step_index == 0:  # the common starting point of every curve (same estimator as later)
            report({"val_rmse": _or(runner.validation_rmse(), worst), "rl_step": 0})
        _, final_val = train_rl(runner, on_step=on_step)
        final = {**last, "rl_step": cfg.rl.steps, "val_rmse": _or(final_val.get("val_rmse"), worst)}
        if final_eval:
            metrics = evaluate_model(runner.rollout, task, cfg.eval, run_dir, "rl")
            for split in ("val", "test"):
                final.update({f"{split}_eval_{k}": metrics[split].get(k) for k in FINAL_KEYS})
        report(_finite(final))
        return final
    finally:
        runner.shutdown()


def _or(value: Any, fallback: float) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else fallback


def _tune_trial(params: dict, base: dict, root: str, init_from: str | None, final_eval: bool, worst: float) -> None:
    """Ray Tune function trainable: the swept values over the base config, then run_trial."""
    mapping = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(mapping, key, value)
    mapping["run_dir"] = str(RunDir(root).trials / tune.get_context().get_trial_id())
    if init_from:
        mapping["sft"]["init_from"] = init_from
    cfg = from_mapping(RunConfig, mapping)
    console.say(f"trial {tune.get_context().get_trial_id()}: {params} -> {cfg.run_dir}")
    run_trial(cfg, tune.report, final_eval, worst)


# -- the sweep --------------------------------------------------------------------------------------
def _shared_start(cfg, run_dir: Path) -> tuple[str | None, float | None]:
    """The supervised checkpoint every trial starts from (trained here, once) and its val RMSE."""
    if cfg.sft.init_from:
        return str(Path(cfg.sft.init_from).resolve()), None
    if not cfg.sft.enabled:
        return None, None
    sft_cfg = copy.deepcopy(cfg)
    sft_cfg.run_dir = str(Path(run_dir) / "sft")
    sft_cfg.log.mlflow_uri = mlflow_uri(cfg.log, run_dir)  # the shared stage's tracked run beside the trials'
    payload = run_supervised(sft_cfg, "sft")
    return str(Path(payload["checkpoint"]).resolve()), payload["val"].get("rmse")


def _tracking_callbacks(cfg, run_dir: Path) -> list:
    """Ray Tune's own MLflow / W&B loggers (log.mlflow / log.wandb): one tracked run per trial, written
    from the driver (so the default SQLite store, RUN_DIR/mlflow.db, has one writer)."""
    log, callbacks = cfg.log, []
    if log.mlflow:
        require_mlflow()
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=mlflow_uri(log, run_dir),
                                              experiment_name=log.mlflow_experiment))
    if log.wandb:
        require("wandb", "wandb")
        from ray.air.integrations.wandb import WandbLoggerCallback

        if log.wandb_mode == "offline":  # Ray's callback asks for an API key unless WANDB_MODE says offline
            os.environ["WANDB_MODE"] = "offline"
        # keyword arguments beyond Ray's go to wandb.init
        callbacks.append(WandbLoggerCallback(project=log.wandb_project, mode=log.wandb_mode,
                                             dir=str(RunDir(run_dir).wandb.parent)))
    return callbacks


def _build_tuner(cfg, run_dir: Path, bundles: list[dict], concurrent: int, init_from: str | None,
                 callbacks: list = ()):
    tcfg = cfg.tune
    base = to_mapping(cfg)
    # The callbacks track each trial; the trial opening its own run too would log it twice.
    base["log"].update(mlflow=False, wandb=False)
    worst = math.inf if tcfg.mode == "min" else -math.inf
    trainable = tune.with_parameters(_tune_trial, base=base, root=str(run_dir), init_from=init_from,
                                     final_eval=tcfg.final_eval, worst=worst)
    # STRICT_PACK: a trial's process and actors share one node (its learner ranks talk over loopback).
    trainable = tune.with_resources(trainable, tune.PlacementGroupFactory(bundles, strategy="STRICT_PACK"))
    scheduler = None
    if tcfg.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="rl_step", max_t=cfg.rl.steps, grace_period=tcfg.grace_period,
                                  reduction_factor=tcfg.reduction_factor)
    search_alg = None
    if tcfg.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=cfg.seed)
    return tune.Tuner(
        trainable,
        param_space=to_param_space(tcfg.space, tcfg.search),
        tune_config=tune.TuneConfig(metric=tcfg.metric, mode=tcfg.mode, num_samples=tcfg.num_samples,
                                    max_concurrent_trials=concurrent, search_alg=search_alg, scheduler=scheduler,
                                    time_budget_s=tcfg.time_budget_s),
        run_config=tune.RunConfig(name=RunDir(run_dir).ray_tune.name, storage_path=str(run_dir),
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=1,
                                  callbacks=list(callbacks)),
    )


def run_tune(cfg) -> dict:
    """The whole sweep; returns the summary written to tune_summary.json."""

    started = time.monotonic()
    check_sweep(cfg)
    # Trials keep the launch directory, so relative paths in the config mean what they meant here.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    run = RunDir(RunDir.create(cfg, "tune").path.resolve())  # absolute: trials run elsewhere
    run_dir = run.path
    cfg.run_dir = str(run_dir)
    console.say(f"run dir: {run_dir}")
    ensure_ray(cfg.ray)
    bundles = trial_bundles(cfg)
    concurrent = check_fits(cfg, bundles)
    callbacks = _tracking_callbacks(cfg, run_dir)  # a missing tracking package fails before any work
    tcfg = cfg.tune
    own_sft = needs_own_sft(tcfg.space)
    count = tcfg.num_samples * (grid_size(tcfg.space, tcfg.search) if tcfg.search != "optuna" else 1)
    console.say(f"tune: {count} trial(s), {concurrent} at a time, each holding {bundles} (STRICT_PACK); "
          f"search {tcfg.search}, scheduler {tcfg.scheduler}, metric {tcfg.metric} ({tcfg.mode})")
    if own_sft:
        console.say("tune: the space touches numbers./model./data./sft. keys: each trial runs its own supervised stage")
        init_from, sft_val_rmse = None, None
    else:
        init_from, sft_val_rmse = _shared_start(cfg, run_dir)
        how = f"from {init_from}" if init_from else "from a freshly built model (sft.enabled=false)"
        console.say(f"tune: every trial starts RL {how}; trials differ only in the swept keys")

    grid = _build_tuner(cfg, run_dir, bundles, concurrent, init_from, callbacks).fit()

    keys = list(tcfg.space)
    rows, curves = collect_rows(grid, keys, tcfg.metric, tcfg.mode, cfg.rl.steps)
    rows.sort(key=lambda r: _sort_key(r.get(tcfg.metric), tcfg.mode))
    columns = ["trial", *keys, "status", "rl_step", tcfg.metric, f"best_{tcfg.metric}",
               *[f"test_eval_{k}" for k in FINAL_KEYS], "wall_s"]
    _write_csv(run.tune_results, rows, columns)
    best = pick_best(rows, tcfg.metric, tcfg.mode, cfg.rl.steps)
    if best is not None:
        _write_best(cfg, best, keys, run.tune_best, init_from)
    plots = [p for p in (plot_curves(curves, rows, keys, run.plot("val_rmse_curves"), tcfg.metric),
                         plot_heatmap(rows, keys, run.plot("reward_group_heatmap"), tcfg.metric)) if p]
    summary = {"trials": rows, "best": best, "metric": tcfg.metric, "mode": tcfg.mode,
               "shared_sft_checkpoint": init_from, "own_sft_per_trial": own_sft, "sft_val_rmse": sft_val_rmse,
               "plots": [str(p) for p in plots], "wall_s": time.monotonic() - started}
    write_metrics_json(run.tune_summary, summary)
    console.say(f"\ntune results ({len(rows)} trials, sorted by {tcfg.metric}; {run.tune_results}):")
    console.say(format_table(rows, columns))
    failed = [r for r in rows if r["status"] == "error"]
    for row in failed:
        console.say(f"tune: trial {row['trial']} failed (after one retry): {row.get('error', '?')}")
    if best is None:
        raise RlregError(f"no trial reported {tcfg.metric} ({len(failed)} of {len(rows)} failed); "
                         f"see the trials' logs under {run.ray_tune}")
    console.say(f"\nbest: trial {best['trial']} {tcfg.metric}={best[tcfg.metric]:.4g}: "
          + ", ".join(f"{k}={best[k]}" for k in keys) + f"\n  -> {run.tune_best}")
    console.say(f"done in {summary['wall_s']:.0f} s")
    return summary


def _sort_key(value: Any, mode: str) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.inf
    return value if mode == "min" else -value


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _write_best(cfg, best: dict, keys: list[str], path: Path, init_from: str | None) -> None:
    """The full RunConfig with the winning values: `rlreg train best.yaml` reruns the best trial."""
    mapping = to_mapping(cfg)
    for key in keys:
        set_dotted(mapping, key, best[key])
    mapping["run_dir"] = None
    header = (f"# best of `rlreg tune` in {cfg.run_dir}: trial {best['trial']}, "
              f"{cfg.tune.metric}={best[cfg.tune.metric]:.6g}\n")
    if init_from:
        header += f"# its RL started from {init_from} (add sft.init_from=... to reuse it)\n"
    write_text(path, header + yaml.safe_dump(mapping, sort_keys=False))

def to_param_space(space: dict, search: str) -> dict:
    """The space as Ray Tune domains, keyed by the dotted config keys."""
    out = {}
    for key, spec in space.items():
        ((kind, arg),) = spec.items()
        if kind == "grid" or (kind == "choice" and search == "grid"):
            out[key] = tune.grid_search(list(arg))
        elif kind == "choice":
            out[key] = tune.choice(list(arg))
        elif kind == "uniform":
            out[key] = tune.uniform(float(arg[0]), float(arg[1]))
        elif kind == "loguniform":
            out[key] = tune.loguniform(float(arg[0]), float(arg[1]))
        else:
            out[key] = tune.randint(int(arg[0]), int(arg[1]))
    return out

"""`rlreg tune`: the tune: section and its search space (checked up front, naming bad keys), trial
sizing and the fail-fast resource check, the report helpers, and one real 2-trial sweep."""
from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import yaml

from conftest import run_tune
from rlreg.config import load_config
from rlreg.errors import ConfigError
from rlreg.tune.sweep import check_fits, check_sweep, trial_bundles
from rlreg.tune.report import pick_best, plot_heatmap
from rlreg.tune.config import grid_size, needs_own_sft

TINY = [
    "data.source=sklearn:diabetes", "data.max_rows=200", "model.layers=1", "model.hidden=64", "model.heads=2",
    "model.prompt_vocab=300", "numbers.base=2", "numbers.length=6", "engine.kv_cache_memory_bytes=67108864",
]


def _cfg(*overrides: str):
    return load_config(None, [*TINY, *overrides])


@pytest.mark.parametrize("space, message", [
    ("{rl.lrr: {choice: [1]}}", "unknown config key 'rl.lrr' (did you mean 'rl.lr'?)"),
    ("{rl: {choice: [1]}}", "'rl' is a config section"),
    ("{rl.lr.x: {choice: [1]}}", "goes past the setting 'rl.lr'"),
    ("{run_dir: {choice: [a]}}", "'run_dir' cannot be swept"),
    ("{rl.lr: {uniform: [0.1]}}", "tune.space['rl.lr'].uniform: expected [low, high]"),
    ("{rl.lr: {loguniform: [0, 1]}}", "both bounds must be > 0"),
    ("{rl.lr: {between: [0, 1]}}", "exactly one of"),
])
def test_space_keys_and_specs_are_checked_when_the_config_loads(space, message):
    with pytest.raises(ConfigError) as err:
        _cfg(f"tune.space={space}")
    assert message in str(err.value)


def test_swept_values_are_checked_against_the_schema_before_any_trial():
    with pytest.raises(ConfigError, match=r"tune.space\['rl.group_size'\]: value 'x' .*expected an integer"):
        check_sweep(_cfg("tune.space={rl.group_size: {choice: [4, x]}}"))
    with pytest.raises(ConfigError, match=r"tune.space\['rl.advantage'\]: value 'nope'"):
        check_sweep(_cfg("tune.space={rl.advantage: {grid: [grpo, nope]}}"))
    with pytest.raises(ConfigError, match="tune.space is empty"):
        check_sweep(_cfg())
    with pytest.raises(ConfigError, match="grace_period"):
        check_sweep(_cfg("rl.steps=4", "tune.grace_period=5", "tune.space={rl.lr: {choice: [0.001]}}"))
    with pytest.raises(ConfigError, match="search: grid needs finite values"):
        _cfg("tune.search=grid", "tune.space={rl.lr: {loguniform: [1.0e-5, 1.0e-3]}}")
    check_sweep(_cfg("tune.space={reward.fn: {grid: [neg_mse, huber]}, rl.lr: {loguniform: [1.0e-5, 1.0e-3]}}"))


@pytest.mark.skipif(importlib.util.find_spec("optuna") is not None, reason="optuna is installed here")
def test_optuna_search_without_optuna_is_a_clear_error():
    with pytest.raises(ConfigError, match="needs the optuna package"):
        check_sweep(_cfg("tune.search=optuna", "tune.space={rl.lr: {loguniform: [1.0e-5, 1.0e-3]}}"))


def test_shared_or_own_supervised_stage_and_trial_count():
    assert not needs_own_sft({"reward.fn": {}, "rl.group_size": {}})
    assert needs_own_sft({"rl.lr": {}, "numbers.base": {}}) and needs_own_sft({"model.layers": {}})
    space = {"reward.fn": {"grid": ["a", "b", "c"]}, "rl.group_size": {"choice": [4, 8]}}
    assert grid_size(space, "random") == 3 and grid_size(space, "grid") == 6


def test_trial_bundles_cover_every_actor_and_unfittable_trials_fail_fast(monkeypatch):
    import ray

    cfg = _cfg("reward.workers=2", "learner.world_size=2", "rl.rollout_workers=1", "tune.max_concurrent=4",
               "ray.learner_resources={fast: 0.5}")
    bundles = trial_bundles(cfg)
    assert bundles[0] == {"CPU": 0.1}
    assert bundles[1] == {"CPU": 0.5 + 2 * 0.1 + 2 * 0.5, "fast": 1.0}  # rollout + rewards + ranks, one node
    node = {"CPU": 4.0, "fast": 1.0, "memory": 1e9, "node:127.0.0.1": 1.0}
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": node}])
    assert check_fits(cfg, bundles) == 1  # 'fast' allows one trial at a time
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 1.0, "fast": 4.0}}])
    with pytest.raises(ConfigError, match=r"cannot fit .* wait forever.*CPU: 1.8"):
        check_fits(cfg, bundles)


def test_best_prefers_finished_trials_and_heatmap_is_drawn(tmp_path):
    rows = [
        {"trial": "a", "reward.fn": "neg_mse", "rl.group_size": 4, "status": "finished", "val_rmse": 10.0},
        {"trial": "b", "reward.fn": "neg_abs", "rl.group_size": 4, "status": "stopped early", "val_rmse": 9.0},
        {"trial": "c", "reward.fn": "neg_abs", "rl.group_size": 8, "status": "finished", "val_rmse": 11.0},
        {"trial": "d", "reward.fn": "neg_mse", "rl.group_size": 8, "status": "error", "val_rmse": None},
    ]
    assert pick_best(rows, "val_rmse", "min", 10)["trial"] == "a"
    assert pick_best(rows, "val_rmse", "max", 10)["trial"] == "c"
    path = plot_heatmap(rows, ["reward.fn", "rl.group_size"], tmp_path / "h.png", "val_rmse")
    assert path is not None and path.stat().st_size > 1000
    assert plot_heatmap(rows, ["reward.fn"], tmp_path / "none.png", "val_rmse") is None


@pytest.mark.engine
def test_tune_two_trials_end_to_end(tmp_path):
    """A real sweep in a subprocess (its own local Ray session, apart from the suite's)."""
    config = tmp_path / "tiny_tune.yaml"
    config.write_text(yaml.safe_dump({"tune": {"scheduler": "asha", "grace_period": 2, "space": {
        "reward.fn": {"grid": ["neg_mse", "neg_abs"]}, "rl.group_size": {"choice": [4]}}}}))
    run_dir = tmp_path / "sweep"
    args = [*TINY, "sft.steps=10", "sft.eval_every=5", "rl.steps=4", "rl.eval_every=2", "rl.batch_size=4",
            "rl.eval_samples=4", "reward.workers=1", "eval.samples=4", "eval.n_boot=50", "eval.plots=false",
            "ray.num_cpus=2", "ray.rollout_cpus=0.4", "ray.learner_cpus=0.4", "ray.torch_threads=1",
            "tune.max_concurrent=2", f"run_dir={run_dir}"]  # 1 CPU per trial: both trials run at once
    proc = run_tune(config, args, timeout_s=420)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "every trial starts RL from" in proc.stdout and "tune results (2 trials" in proc.stdout
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert sorted(r["reward.fn"] for r in rows) == ["neg_abs", "neg_mse"]
    assert all(r["status"] in ("finished", "stopped early") for r in rows), rows
    assert any(r["status"] == "finished" and r["test_eval_rmse"] for r in rows)
    best = load_config(run_dir / "best.yaml")  # runnable: a full, valid RunConfig
    winner = next(r for r in rows if r["trial"] == json.loads((run_dir / "tune_summary.json").read_text())["best"]["trial"])
    assert best.reward.fn == winner["reward.fn"] and best.run_dir is None
    assert (run_dir / "val_rmse_curves.png").is_file() and (run_dir / "sft" / "checkpoint").is_dir()
    for trial in rows:  # each trial ran its own swept value, in its own run dir
        trial_dir = run_dir / "trials" / trial["trial"]
        assert load_config(trial_dir / "config.yaml").reward.fn == trial["reward.fn"]
        assert (trial_dir / "rl_log.jsonl").is_file()

"""Bad input corpus: each case ends in one clear error naming the file, key or row at fault (CLI:
exit code 2, `rlreg: error: ...` on stderr, no traceback), or in a counted, reported penalty.

Cases here run through the real CLI entry point (`rlreg.cli.main`, what the `rlreg` script calls;
one also as a `python -m rlreg` process, as tests/core/test_cli.py does) unless they are about values
produced mid-run (reward functions, decoded sequences), which go through the reward worker itself.

Covered elsewhere (not repeated here), 41 more:
- tests/core/test_config.py (7): unknown key with suggestion, unknown section, mistyped int/bool,
  out-of-range value, override syntax, bool-for-float, missing config file;
- tests/data/test_data_bad_input.py (26): CSV missing/out-of-range target column, non-numeric / NaN /
  inf targets with line numbers, empty and header-only files, missing features, ragged rows, file
  not found; UCI split indices out of range / beyond n_splits / overlapping, non-numeric data,
  unknown dataset; sqlcard line-count mismatch, non-numeric cardinality, misaligned lines; unknown
  source prefix / builtin, missing data dir, data.* values, prompt template field, vector input
  for a text source;
- tests/core/test_cli.py (2): unknown key through the CLI, bad source in `rlreg data show`;
- tests/actors/test_reward_pool.py (6): reward functions that raise / return NaN / the wrong shape / hang,
  invalid sequences (penalty), a killed reward actor (on real Ray actors);
- tests/commands/test_predict.py and tests/commands/test_eval_cli.py: bad prediction inputs and checkpoints."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from reward_cases import reward_case
from conftest import SHARED_DATA

TINY = ["data.max_rows=200", "model.layers=1", "model.hidden=64", "model.heads=2", "model.prompt_vocab=300",
        "numbers.base=2", "numbers.length=6", "sft.enabled=false"]
POWERS_OF_TEN = "x,y\n" + "".join(f"{i},{10.0 ** i}\n" for i in range(12))  # targets 1 .. 1e11
SHARED_SQLCARD = SHARED_DATA / "sqlcard" / "scale.sql"


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    """The `rlreg` entry point in this process; an exception escaping it fails the test."""
    from rlreg.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def csv(tmp: Path, body: str, name: str = "data.csv") -> str:
    return f"data.source=csv:{write(tmp / name, body)}"


# Each case: (id, builder(tmp) -> argv for `rlreg ...`, substrings stderr must hold). `{tmp}` in a
# substring stands for the case's temporary directory.
def _train(*overrides: str) -> list[str]:
    return ["train", "-", *TINY, *overrides]


CASES = [
    # --- configs: unknown, mistyped, out-of-range, malformed ---------------------------------------
    ("yaml_unknown_key", lambda t: ["train", str(write(t / "c.yaml", "model:\n  layerz: 3\n"))],
     ["c.yaml", "unknown config key 'model.layerz'", "did you mean 'model.layers'"]),
    ("yaml_not_yaml", lambda t: ["train", str(write(t / "c.yaml", "model: [1,\n"))], ["c.yaml", "not valid YAML"]),
    ("yaml_top_level_list", lambda t: ["train", str(write(t / "c.yaml", "- 1\n- 2\n"))],
     ["c.yaml", "top level must be a mapping"]),
    ("override_without_value", lambda t: _train("model.layers"), ["override 'model.layers'", "dotted.key=value"]),
    ("mistyped_int", lambda t: _train("model.layers=two"), ["model.layers: expected an integer, got 'two'"]),
    ("mistyped_bool", lambda t: _train("engine.enable_prefix_caching=3"), ["engine.enable_prefix_caching"]),
    ("invalid_group_size_for_grpo", lambda t: _train("rl.advantage=grpo", "rl.group_size=1"),
     ["rl.group_size must be >= 2", "grpo"]),
    ("invalid_temperature", lambda t: _train("rl.temperature=0"), ["rl.temperature must be > 0"]),
    ("invalid_checkpoint_every", lambda t: _train("rl.checkpoint_every=-1"), ["rl.checkpoint_every must be >= 0"]),
    ("invalid_zero_stage", lambda t: _train("learner.zero_stage=5"), ["learner.zero_stage must be 0, 1, 2 or 3"]),
    ("invalid_max_restarts", lambda t: _train("ray.max_restarts=-1"), ["ray.max_restarts must be >= 0"]),
    ("invalid_reward_space", lambda t: _train("reward.space=log"), ["reward.space must be one of"]),
    ("unknown_reward_fn", lambda t: _train("reward.fn=nosuch"), ["unknown reward 'nosuch'", "neg_mse"]),
    ("reward_file_missing", lambda t: _train(f"reward.fn={t}/none.py:f"), [f"{{tmp}}/none.py", "not found"]),
    ("unknown_tokenizer", lambda t: _train("numbers.tokenizer=bogus"), ["numbers.tokenizer must be one of"]),
    ("resume_not_a_run_dir", lambda t: ["train", "-", "--resume", str(t)], ["--resume", "no config.yaml there"]),
    # --- data: malformed CSVs, non-finite / non-numeric targets, empty splits ------------------------
    ("csv_missing_target_column", lambda t: _train(csv(t, "a,b\n1,2\n3,4\n"), "data.target=price"),
     ["data.csv", "'price'"]),
    ("csv_non_numeric_target", lambda t: _train(csv(t, "x,y\n1,10\n2,abc\n")), ["data.csv", "line 3", "'abc'"]),
    ("csv_nan_target", lambda t: _train(csv(t, "x,y\n1,10\n2,nan\n")), ["data.csv", "line 3", "missing",
                                                                         "data.missing=drop"]),
    ("csv_inf_target", lambda t: _train(csv(t, "x,y\n1,10\n2,inf\n")), ["data.csv", "line 3", "infinite"]),
    ("csv_empty_file", lambda t: _train(csv(t, "")), ["data.csv", "empty"]),
    ("csv_ragged_row", lambda t: _train(csv(t, "x,y\n1,2\n3,4,5,6\n")), ["data.csv", "line 3"]),
    ("empty_val_split", lambda t: _train(csv(t, "x,y\n1,2\n2,3\n3,4\n")),
     ["the val split(s) are empty", "data.val_fraction"]),
    ("unknown_source", lambda t: _train("data.source=kaggle:titanic"), ["'kaggle'", "csv"]),
    # --- number formats that cannot write the targets: the error names the setting to change ---------
    ("normalized_with_identity_scaler", lambda t: _train("data.source=sklearn:diabetes", "numbers.scaler=identity"),
     ["train row 0", "numbers.tokenizer=normalized", "numbers.scaler"]),
    ("ieee_exponent_too_small",
     lambda t: _train(csv(t, POWERS_OF_TEN), "numbers.tokenizer=ieee", "numbers.scaler=identity",
                      "numbers.exponent_digits=1"),
     ["row", "numbers.tokenizer=ieee", "numbers.exponent_digits"]),
    ("p10_exponent_range_too_small",
     lambda t: _train(csv(t, POWERS_OF_TEN), "numbers.tokenizer=p10", "numbers.scaler=identity",
                      "numbers.max_exponent=3"),
     ["row", "numbers.tokenizer=p10", "numbers.max_exponent"]),
]


@pytest.mark.parametrize("argv, expected", [pytest.param(build, expected, id=name) for name, build, expected in CASES])
def test_bad_input_cli_exits_2_naming_the_fault(capsys, tmp_path, argv, expected):
    args = argv(tmp_path)
    if args[:2] == ["train", "-"]:  # no config file: defaults + overrides (the CLI takes CONFIG first)
        args = ["train", str(write(tmp_path / "base.yaml", "{}\n")), *args[2:], f"run_dir={tmp_path / 'run'}"]
    code, err = run_cli(capsys, args)
    assert code == 2, err
    assert err.startswith("rlreg: error: ") and "Traceback" not in err
    for part in expected:
        assert part.replace("{tmp}", str(tmp_path)) in err, f"{part!r} not in: {err}"


@pytest.mark.skipif(not SHARED_SQLCARD.is_file(), reason="needs ../shared/data/sqlcard")
def test_bad_input_ieee_exponent_range_too_small_for_sqlcard(capsys, tmp_path):
    code, err = run_cli(capsys, ["train", str(write(tmp_path / "c.yaml", "{}\n")), *TINY, "data.source=sqlcard:scale",
                                 "numbers.tokenizer=ieee", "numbers.scaler=identity", "numbers.exponent_digits=1",
                                 f"run_dir={tmp_path / 'run'}"])
    assert code == 2 and "Traceback" not in err
    assert "scale train row" in err and "numbers.exponent_digits" in err


# --- resources that can never fit: fail in seconds, naming the settings ------------------------------

@pytest.mark.engine
@pytest.mark.parametrize("setting, named", [("learner.world_size=64", "learner.world_size=64"),
                                            ("ray.rollout_cpus=100", "ray.rollout_cpus=100")])
def test_bad_input_resources_that_cannot_fit_fail_fast(capsys, tmp_path, ray_session, setting, named):
    t0 = time.monotonic()
    code, err = run_cli(capsys, ["train", str(write(tmp_path / "c.yaml", "{}\n")), *TINY,
                                 "data.source=sklearn:diabetes", setting, f"run_dir={tmp_path / 'run'}"])
    took = time.monotonic() - t0
    assert code == 2 and "Traceback" not in err, err
    assert named in err and "CPUs" in err and "the cluster has" in err
    assert took < 20, f"took {took:.0f} s"


@pytest.mark.engine
def test_bad_input_invalid_resources_fail_fast_as_a_process(tmp_path):
    """`python -m rlreg train ... learner.world_size=64`: starts Ray, then stops in seconds."""
    cfg = write(tmp_path / "c.yaml", "{}\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "rlreg", "train", str(cfg), *TINY, "learner.world_size=64",
                          "ray.num_cpus=2", f"run_dir={tmp_path / 'run'}"], capture_output=True, text=True,
                         env=env, timeout=120)
    took = time.monotonic() - t0
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "learner.world_size=64" in out.stderr and "2 of 2 CPUs" in out.stderr
    # Ray start and imports take ~10 s here; without the check the run would wait for actors until
    # ray.actor_start_timeout_s (300 s). The bound leaves room for a loaded 2-core machine.
    assert took < 90, f"took {took:.0f} s"


# --- values produced mid-run: counted, reported penalties, never a crash -----------------------------

@pytest.fixture(scope="module")
def reward_setup(tmp_path_factory):
    return reward_case(tmp_path_factory.mktemp("rewards"))


def _score(reward_setup, fn: str, ids=None, **kw) -> dict:
    from rlreg.actors.config import RewardConfig
    from rlreg.actors.reward import RewardWorker

    path, tok, scaler, targets, default_ids = reward_setup
    cfg = RewardConfig(fn=fn if ":" in fn or fn == "neg_mse" else f"{path}:{fn}", timeout_s=0.5,
                       failure_penalty=-3.0, invalid_penalty=-7.0, **kw)
    return RewardWorker(tok.describe(), scaler.state_dict(), cfg).score(default_ids if ids is None else ids, targets)


@pytest.mark.parametrize("fn, failed, message", [
    ("raises", 4, "raised RuntimeError: boom"),
    ("some_nan", 2, None),
    ("wrong_shape", 4, "returned shape (5,), expected (4,)"),
    ("slow", 4, "did not return within reward.timeout_s=0.5"),
])
def test_bad_input_reward_function_is_penalised_counted_and_reported(reward_setup, fn, failed, message):
    out = _score(reward_setup, fn)
    assert int(out["failed"].sum()) == failed and (out["rewards"][out["failed"]] == -3.0).all()
    assert np.isfinite(out["rewards"]).all()
    if message:
        assert message in out["error"] and fn in out["error"], out["error"]


def test_bad_input_invalid_decoded_sequences_get_the_penalty_and_are_counted(reward_setup):
    _, tok, _, _, ids = reward_setup
    bad = ids.copy()
    bad[1, 0] = 99  # not a token
    bad[2, :] = -1  # nothing valid at all
    out = _score(reward_setup, "neg_mse", ids=bad)
    assert out["valid"].tolist() == [True, False, False, True]
    assert (out["rewards"][[1, 2]] == -7.0).all() and np.isnan(out["pred"][[1, 2]]).all()
    assert out["failed"].sum() == 0  # invalid samples are counted apart from reward failures
    assert 1 - out["valid"].mean() == 0.5  # what the RL log reports as invalid_rate

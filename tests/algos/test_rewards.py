"""Reward functions against hand values, NaN handling, loading by spec, output checks."""
import math
import sys
import textwrap
import warnings

import numpy as np
import pytest

from rlreg.algos.rewards import REWARDS, check_rewards, load_reward
from rlreg.errors import ConfigError

PRED = np.array([1.0, 2.0, np.nan])
TARGET = np.array([0.0, 4.0, 1.0])


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("neg_mse", {}, [-1.0, -4.0]),
        ("clipped_mse", {"clip": 3.0}, [-1.0, -3.0]),
        ("neg_abs", {}, [-1.0, -2.0]),
        ("huber", {}, [-0.5, -1.5]),  # err 1 -> 0.5; err 2 -> 0.5 + 1 * (2 - 1)
        ("huber", {"delta": 2.0}, [-0.5, -2.0]),
    ],
)
def test_reward_hand_values_and_nan_passthrough(name, kwargs, expected):
    out = _no_warnings(REWARDS[name], PRED, TARGET, **kwargs)
    assert out.dtype == np.float64 and out.shape == PRED.shape
    np.testing.assert_allclose(out[:2], expected)
    assert np.isnan(out[2])  # a failed decode stays visible as NaN


def test_clipped_mse_default_clip_is_50():
    np.testing.assert_allclose(REWARDS["clipped_mse"](np.array([10.0, 3.0]), np.array([0.0, 0.0])), [-50.0, -9.0])


def test_huber_linear_branch():
    # delta 2, err 3: 0.5 * 4 + 2 * (3 - 2) = 4
    np.testing.assert_allclose(REWARDS["huber"](np.array([3.0]), np.array([0.0]), delta=2.0), [-4.0])


def test_neg_rel():
    out = _no_warnings(REWARDS["neg_rel"], np.array([3.0, 1.0, np.nan]), np.array([2.0, 0.0, 1.0]))
    np.testing.assert_allclose(out[:2], [-0.5, -1e8])
    assert np.isnan(out[2])


def test_neg_log_ratio_and_its_nonpositive_penalty():
    pred = np.array([math.e, 1.0, 0.0, -5.0, np.nan])
    target = np.array([1.0, math.e**2, 1.0, 1.0, 1.0])
    out = _no_warnings(REWARDS["neg_log_ratio"], pred, target)
    penalty = -abs(math.log(1e-12))
    np.testing.assert_allclose(out[:4], [-1.0, -2.0, penalty, penalty])
    assert np.isnan(out[4])
    # the penalty is no better than the smallest positive prediction
    assert out[2] <= REWARDS["neg_log_ratio"](np.array([1e-11]), np.array([1.0]))[0]
    with pytest.raises(ValueError, match="positive targets"):
        REWARDS["neg_log_ratio"](np.array([1.0]), np.array([0.0]))


def test_rewards_keep_2d_shape_and_reject_mismatch():
    pred = np.zeros((2, 3))
    target = np.ones((2, 3))
    for name, fn in REWARDS.items():
        assert fn(pred + 1.5, target).shape == (2, 3), name
    with pytest.raises(ValueError, match="shape"):
        REWARDS["neg_mse"](np.zeros(3), np.zeros(4))


def test_columns_are_accepted_and_ignored_by_builtins():
    out = REWARDS["neg_mse"](np.array([1.0]), np.array([0.0]), prompt=["x"], weight=np.array([3.0]))
    np.testing.assert_allclose(out, [-1.0])


def test_load_reward_by_name_with_options():
    fn = load_reward("clipped_mse", clip=2.0)
    np.testing.assert_allclose(fn(np.array([10.0]), np.array([0.0])), [-2.0])
    assert load_reward("neg_mse") is REWARDS["neg_mse"]
    with pytest.raises(ConfigError, match="no option 'clip_val'"):
        load_reward("clipped_mse", clip_val=2.0)
    with pytest.raises(ConfigError, match="neg_mse"):
        load_reward("mse")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            NOT_A_FUNCTION = 3
            def score(pred, target, scale=1.0, **columns):
                return -scale * np.abs(pred - target)
            """
        )
    )
    (tmp_path / "broken_rewards_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("my_rewards_mod", "broken_rewards_mod"):
        sys.modules.pop(name, None)


def test_load_reward_from_import_path(user_module):
    fn = load_reward("my_rewards_mod:score", scale=2.0)
    np.testing.assert_allclose(fn(np.array([1.0, 4.0]), np.array([0.0, 1.0])), [-2.0, -6.0])
    from_file = load_reward(f"{user_module / 'my_rewards_mod.py'}:score")
    np.testing.assert_allclose(from_file(np.array([1.0]), np.array([3.0])), [-2.0])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_xyz:score", "cannot import module 'no_such_module_xyz'"),
        ("my_rewards_mod:missing", "no attribute 'missing'"),
        ("my_rewards_mod:NOT_A_FUNCTION", "not callable"),
        ("broken_rewards_mod:score", "RuntimeError: boom at import"),
        ("my_rewards_mod:", "module:function"),
        ("/nonexistent/dir/r.py:score", "not found"),
    ],
)
def test_load_reward_errors(user_module, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_reward(spec)


def test_load_reward_rejects_unknown_option_of_user_function(user_module):
    with pytest.raises(ConfigError, match="options: \\['scale'\\]"):
        load_reward("my_rewards_mod:score", sclae=2.0)


def test_check_rewards_masks_failures():
    bad = check_rewards(np.array([0.0, np.nan, -np.inf, 1.0]), (4,), "r")
    np.testing.assert_array_equal(bad, [False, True, True, False])
    np.testing.assert_array_equal(check_rewards([1.0, None], (2,), "r"), [False, True])
    assert check_rewards(np.zeros((2, 3), dtype=np.float32), (2, 3), "r").shape == (2, 3)


@pytest.mark.parametrize(
    "out, message",
    [
        (np.zeros(3), r"shape \(3,\), expected \(4,\)"),
        (1.0, r"shape \(\), expected \(4,\)"),
        (np.array(["a", "b", "c", "d"]), "dtype"),
        ([1.0, None, "x", 2.0], "non-numbers"),
        ([[1.0], [2.0, 3.0]], "ragged"),
    ],
)
def test_check_rewards_rejects_wrong_output(out, message):
    with pytest.raises(ValueError, match=message) as err:
        check_rewards(out, (4,), "my_fn")
    assert "my_fn" in str(err.value)

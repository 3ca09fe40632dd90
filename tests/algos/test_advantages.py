"""Advantage estimators against hand-computed values, the registry, group filtering, AlgoConfig."""
import math

import numpy as np
import pytest

from rlreg.algos import advantages
from rlreg.algos.advantages import ADVANTAGES, get_advantage, needs_greedy, register_advantage
from rlreg.algos.config import AlgoConfig
from rlreg.algos.filtering import filtered_fraction, std_filter
from rlreg.errors import ConfigError

REWARDS = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
GREEDY = np.array([2.0, 1.0])


def test_remax_subtracts_greedy_reward():
    out = get_advantage("remax")(REWARDS, GREEDY)
    np.testing.assert_allclose(out, [[-1, 0, 1], [-1, -1, 5]])
    assert out.dtype == np.float64


def test_grpo_uses_population_std():
    # row 0: mean 2, std sqrt(2/3); row 1: mean 2, deviations (-2, -2, 4), std sqrt(8)
    out = get_advantage("grpo")(REWARDS, None, eps=0.0)
    s = math.sqrt(1.5)
    np.testing.assert_allclose(out, [[-s, 0, s], [-1 / math.sqrt(2), -1 / math.sqrt(2), math.sqrt(2)]])


def test_grpo_constant_group_gives_zero_not_nan():
    out = get_advantage("grpo")(np.array([[4.0, 4.0, 4.0]]), None)
    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.0]])


def test_rloo_leaves_one_out():
    out = get_advantage("rloo")(REWARDS, None)
    # 1 - mean(2, 3), 2 - mean(1, 3), 3 - mean(1, 2); 0 - mean(0, 6), ..., 6 - mean(0, 0)
    np.testing.assert_allclose(out, [[-1.5, 0.0, 1.5], [-3.0, -3.0, 6.0]])


def test_drgrpo_centres_without_scaling():
    out = get_advantage("drgrpo")(REWARDS, None)
    np.testing.assert_allclose(out, [[-1, 0, 1], [-2, -2, 4]])


def test_needs_greedy_only_for_remax():
    assert needs_greedy("remax") is True
    assert [n for n in ("grpo", "rloo", "drgrpo") if needs_greedy(n)] == []


def test_unknown_estimator_lists_known_names():
    with pytest.raises(ConfigError, match="remax") as err:
        get_advantage("ppo-gae")
    assert "grpo" in str(err.value) and "ppo-gae" in str(err.value)
    with pytest.raises(ConfigError):
        needs_greedy("nope")


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="baseline_rewards"):
        get_advantage("remax")(REWARDS, None)
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        get_advantage("remax")(REWARDS, np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="G=1"):
        get_advantage("rloo")(np.array([[1.0], [2.0]]), None)
    with pytest.raises(ValueError, match="NaN"):
        get_advantage("grpo")(np.array([[1.0, np.nan]]), None)
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        get_advantage("drgrpo")(np.array([1.0, 2.0]), None)


def test_register_custom_estimator():
    @register_advantage("test_double", needs_greedy=True)
    def double(rewards, baseline_rewards, eps=1e-6):
        return 2 * (np.asarray(rewards) - np.asarray(baseline_rewards)[:, None])

    try:
        assert needs_greedy("test_double")
        np.testing.assert_allclose(get_advantage("test_double")(REWARDS, GREEDY), [[-2, 0, 2], [-2, -2, 10]])
        with pytest.raises(ValueError, match="already registered"):
            register_advantage("test_double")(lambda r, b, eps=1e-6: r)
    finally:
        del advantages.ADVANTAGES["test_double"]
    assert "test_double" not in ADVANTAGES


def test_std_filter_keeps_groups_with_spread():
    rewards = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0], [5.0, 5.0, 5.0001], [0.0, np.nan, 1.0]])
    keep = std_filter(rewards, tol=1e-3)
    np.testing.assert_array_equal(keep, [False, True, False, False])
    assert filtered_fraction(keep) == pytest.approx(0.75)
    assert filtered_fraction(np.array([], dtype=bool)) == 0.0
    np.testing.assert_array_equal(std_filter(rewards[:3], tol=0.0), [False, True, True])
    with pytest.raises(ValueError):
        std_filter(rewards, tol=-1.0)


def test_algo_config_validation_names_rl_keys():
    assert AlgoConfig().validate().advantage == "remax"
    AlgoConfig(clip_eps=0.2, std_filter_tol=None).validate()
    with pytest.raises(ConfigError, match="rl.advantage"):
        AlgoConfig(advantage="ppo").validate()
    with pytest.raises(ConfigError, match="rl.clip_eps"):
        AlgoConfig(clip_eps=1.5).validate()
    with pytest.raises(ConfigError, match="rl.kl_in"):
        AlgoConfig(kl_in="both").validate()
    with pytest.raises(ConfigError, match="rl.expert_ce_coef"):
        AlgoConfig(expert_ce_coef=-0.1).validate()

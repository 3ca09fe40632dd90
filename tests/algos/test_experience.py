"""make_experience and LearnerBatch: the RL step's algorithm work between the reward pool and the
learner, on hand-made rollouts (no Ray, no engines, no torch)."""
import subprocess
import sys

import numpy as np
import pytest

from rlreg.algos.advantages import ADVANTAGES
from rlreg.algos.config import AlgoConfig
from rlreg.algos.experience import LearnerBatch, expert_targets, kl_for_reward, make_experience

B, G, L = 3, 4, 2
PROMPTS = [[1, 5], [1, 6, 7], [1, 8]]


def _rollouts(seed: int = 0):
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, 10, (B, G, L))
    logprobs = -rng.random((B, G, L)).astype(np.float32)
    rewards = -rng.random((B, G)) * 3
    return samples, logprobs, rewards


def _make(algo: AlgoConfig, rewards=None, valid=None, **kw):
    samples, logprobs, default_rewards = _rollouts()
    rewards = default_rewards if rewards is None else rewards
    valid = np.ones((B, G), dtype=bool) if valid is None else valid
    kw.setdefault("baseline", np.array([-1.0, -0.5, -2.0]) if algo.advantage == "remax" else None)
    return make_experience({"prompts": PROMPTS}, samples, logprobs, rewards, valid, np.array([0.1, 0.5, 0.9]),
                           algo, expert_next_ids=lambda y, prefix: 7, **kw)


def test_importable_without_torch_or_ray():
    code = "import sys, rlreg.algos.experience; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_kl_in_the_reward(kind):
    samples, logprobs, rewards = _rollouts()
    ref = logprobs.astype(np.float64) + np.random.default_rng(1).normal(0, 0.3, logprobs.shape)
    algo = AlgoConfig(advantage="grpo", kl_coef=0.5, kl_kind=kind, kl_in="reward", expert_ce_coef=0.0)
    experience, stats = _make(algo, ref_logp=ref)
    lp = logprobs.astype(np.float64)
    per_token = lp - ref if kind == "k1" else np.exp(ref - lp) - (ref - lp) - 1
    kl = 0.5 * per_token.sum(axis=-1)  # [B, G]: per sequence
    np.testing.assert_allclose(experience.rewards, rewards - kl, rtol=1e-12)
    assert stats["kl_reward"] == pytest.approx(kl.mean())
    assert stats["reward_mean"] == pytest.approx((rewards - kl).mean())  # stats see the rewards after KL
    grpo = (rewards - kl - (rewards - kl).mean(1, keepdims=True)) / ((rewards - kl).std(1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(experience.advantages, grpo, rtol=1e-9)
    if kind == "k3":
        assert (per_token >= 0).all()
    # KL in the loss (or no KL) leaves the rewards alone and needs no reference
    for other in (AlgoConfig(advantage="grpo", kl_coef=0.5, kl_in="loss"), AlgoConfig(advantage="grpo")):
        experience, stats = _make(other)
        np.testing.assert_array_equal(experience.rewards, rewards)
        assert "kl_reward" not in stats
    with pytest.raises(ValueError, match="ref_logp"):
        _make(algo)


def test_kl_for_reward_ignores_masked_tokens():
    logp = np.array([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
    ref = np.array([[-1.5, -1.0, -np.inf], [-1.0, -1.0, -1.0]])
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(kl_for_reward(logp, ref, "k3", 1.0, mask),
                               [np.exp(-0.5) + 0.5 - 1 + np.exp(1.0) - 1.0 - 1, 0.0])
    with pytest.raises(ValueError, match="k2"):
        kl_for_reward(logp, ref, "k2", 1.0)


def test_std_filter_drops_a_flat_group():
    samples, _, rewards = _rollouts()
    rewards[1] = -2.0  # every sample of input 1 scored the same: no signal
    experience, stats = _make(AlgoConfig(advantage="grpo", std_filter_tol=1e-6, expert_ce_coef=0.0), rewards=rewards)
    np.testing.assert_array_equal(experience.keep, [True, False, True])
    assert stats["filtered_fraction"] == pytest.approx(1 / 3)
    batch = experience.learner_batch()
    assert len(batch) == 2 * G
    assert batch.prompts == [PROMPTS[0]] * G + [PROMPTS[2]] * G
    np.testing.assert_array_equal(batch.tokens, np.concatenate([samples[0], samples[2]]))
    np.testing.assert_array_equal(batch.advantages, experience.advantages[[0, 2]].reshape(-1))
    # without a tolerance nothing is dropped
    experience, stats = _make(AlgoConfig(advantage="grpo", expert_ce_coef=0.0), rewards=rewards)
    assert experience.keep.all() and stats["filtered_fraction"] == 0.0 and len(experience.learner_batch()) == B * G


def test_invalid_samples_keep_the_penalty_and_are_counted():
    _, _, rewards = _rollouts()
    valid = np.ones((B, G), dtype=bool)
    valid[0, 1] = valid[2, 3] = False
    rewards[~valid] = -10.0  # the reward pool's invalid_penalty
    experience, stats = _make(AlgoConfig(advantage="rloo", expert_ce_coef=0.0), rewards=rewards, valid=valid)
    assert stats["invalid_rate"] == pytest.approx(2 / (B * G))
    assert (experience.rewards[~valid] == -10.0).all() and stats["reward_min"] == -10.0
    assert (experience.advantages[~valid] < 0).all()  # the penalty is a signal, not dropped
    batch = experience.learner_batch()
    assert len(batch) == B * G
    np.testing.assert_array_equal(batch.advantages, experience.advantages.reshape(-1))


def test_each_advantage_estimator_is_wired():
    _, _, rewards = _rollouts()
    greedy = np.array([-1.0, -0.5, -2.0])
    expected = {
        "remax": rewards - greedy[:, None],
        "grpo": (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, keepdims=True) + 1e-6),
        "rloo": rewards - (rewards.sum(1, keepdims=True) - rewards) / (G - 1),
        "drgrpo": rewards - rewards.mean(1, keepdims=True),
    }
    assert set(expected) <= set(ADVANTAGES)
    for name, want in expected.items():
        algo = AlgoConfig(advantage=name, expert_ce_coef=0.0)
        experience, stats = _make(algo, baseline=greedy)
        np.testing.assert_allclose(experience.advantages, want, rtol=1e-12, err_msg=name)
        np.testing.assert_array_equal(experience.learner_batch().advantages, experience.advantages.reshape(-1))
        assert stats["advantage_mean"] == pytest.approx(want.mean())
        moved, _ = _make(algo, baseline=greedy + 1.0)
        if name == "remax":  # the greedy decode's reward is the baseline
            np.testing.assert_allclose(moved.advantages, want - 1.0, rtol=1e-12)
        else:  # group baselines: the greedy reward is not used (nor needed)
            np.testing.assert_array_equal(moved.advantages, experience.advantages)
            np.testing.assert_array_equal(_make(algo, baseline=None)[0].advantages, experience.advantages)
    with pytest.raises(ValueError, match="baseline"):
        _make(AlgoConfig(advantage="remax"), baseline=None)


def test_expert_targets_only_when_expert_ce_is_on():
    samples, _, _ = _rollouts()
    off, _ = _make(AlgoConfig(advantage="grpo", expert_ce_coef=0.0))
    assert off.expert is None and off.learner_batch().expert is None
    calls = []

    def next_id(y, prefix):
        calls.append((y, list(prefix)))
        return int(10 * y) + len(prefix)

    on, _ = make_experience({"prompts": PROMPTS}, samples, _rollouts()[1], _rollouts()[2], np.ones((B, G), bool),
                            np.array([0.1, 0.5, 0.9]), AlgoConfig(advantage="grpo", expert_ce_coef=0.05),
                            expert_next_ids=next_id)
    assert on.expert.shape == (B, G, L)
    np.testing.assert_array_equal(on.expert[:, :, 0], np.repeat([[1], [5], [9]], G, axis=1))  # each row's own target
    np.testing.assert_array_equal(on.expert[:, :, 1], np.repeat([[2], [6], [10]], G, axis=1))
    assert (0.5, [int(samples[1, 2, 0])]) in calls  # conditioned on the rollout's own prefix
    np.testing.assert_array_equal(on.learner_batch().expert, on.expert.reshape(B * G, L))
    np.testing.assert_array_equal(on.expert.reshape(B * G, L),
                                  expert_targets(samples.reshape(B * G, L), np.repeat([0.1, 0.5, 0.9], G), next_id))
    with pytest.raises(ValueError, match="expert_next_ids"):
        make_experience({"prompts": PROMPTS}, samples, _rollouts()[1], _rollouts()[2], np.ones((B, G), bool),
                        np.zeros(B), AlgoConfig(advantage="grpo", expert_ce_coef=0.05))


def test_learner_batch_rows_features_and_old_logprobs():
    samples, logprobs, rewards = _rollouts()
    features = np.arange(B * 2, dtype=np.float32).reshape(B, 2)
    experience, _ = make_experience({"prompts": PROMPTS, "features": features}, samples, logprobs, rewards,
                                    np.ones((B, G), bool), np.zeros(B), AlgoConfig(advantage="grpo", expert_ce_coef=0.0))
    batch = experience.learner_batch()
    assert batch.prompts == [p for p in PROMPTS for _ in range(G)]  # the G samples of a prompt together
    np.testing.assert_array_equal(batch.features, np.repeat(features, G, axis=0))
    np.testing.assert_array_equal(batch.old_logp, logprobs.reshape(B * G, L))
    assert batch.old_logp.dtype == np.float32 and batch.tokens.shape == (B * G, L)
    with pytest.raises(ValueError, match="rewards"):
        make_experience({"prompts": PROMPTS}, samples, logprobs, rewards.reshape(-1), np.ones((B, G), bool),
                        np.zeros(B), AlgoConfig(advantage="grpo"))


@pytest.mark.parametrize("n", [0, 1, 5, 12])
def test_shards_cover_every_row_once(n):
    rng = np.random.default_rng(n)
    batch = LearnerBatch(prompts=[[i] for i in range(n)], tokens=rng.integers(0, 5, (n, 3)),
                         features=rng.random((n, 2)), advantages=np.arange(n, dtype=float))
    for world in (1, 2, 3, 4):
        shards = batch.shards(world)
        assert len(shards) == world and [len(s) for s in shards] == batch.shard_sizes(world)
        assert max(batch.shard_sizes(world)) - min(batch.shard_sizes(world)) <= 1
        assert [p for s in shards for p in s.prompts] == batch.prompts  # contiguous, in order, each once
        for field in ("tokens", "features", "advantages"):
            np.testing.assert_array_equal(np.concatenate([getattr(s, field) for s in shards]), getattr(batch, field))
        assert all(s.old_logp is None and s.expert is None for s in shards)
    picked = batch.select(np.arange(n) % 2 == 0)
    assert picked.prompts == batch.prompts[::2]
    np.testing.assert_array_equal(picked.tokens, batch.tokens[::2])
    assert batch.select([]).prompts == [] and len(batch.select([])) == 0

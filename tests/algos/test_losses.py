"""Learner losses: policy gradient, KL, entropy, token CE / NTL / DIST2 / expert CE, and the two
objectives composed of them (rl_loss, supervised_loss)."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rlreg.algos.config import RLLossOptions, SFTLossOptions
from rlreg.algos.experience import LearnerBatch, expert_targets, kl_for_reward
from rlreg.algos.losses import entropy, kl_loss, kl_penalty, policy_loss, rl_loss
from rlreg.algos.token_losses import dist2, expert_ce, ntl_was, supervised_loss, token_ce
from rlreg.train.config import RLConfig, SFTConfig

NEG_INF = -math.inf


def _leaf(values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


# ------------------------------------------------------------------------------ policy loss
def test_unclipped_gradient_is_policy_gradient_over_token_count():
    logp = _leaf([[-0.5, -1.0, -2.0], [-0.1, -0.7, -3.0]])
    old_logp = torch.tensor([[-0.4, -1.2, -2.0], [-0.3, -0.7, -1.0]], dtype=torch.float64)
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, stats = policy_loss(logp, old_logp, adv, mask, clip_eps=None)
    loss.backward()
    expected = -adv[:, None] * mask / mask.sum()
    torch.testing.assert_close(logp.grad, expected.to(torch.float64))
    assert loss.item() == pytest.approx((-2.0 * 3 + 1.0 * 2) / 5)
    assert stats["clip_fraction"] == 0.0
    ratios = torch.exp(logp.detach() - old_logp)[mask.bool()]
    assert stats["ratio_mean"] == pytest.approx(float(ratios.mean()))


def test_unclipped_seq_mean_weighs_sequences_equally():
    logp = _leaf([[-0.5, -1.0, -2.0], [-0.1, -0.7, -3.0]])
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, _ = policy_loss(logp, None, adv, mask, clip_eps=None, loss_agg="seq_mean")
    loss.backward()
    expected = torch.tensor([[-2 / 6, -2 / 6, -2 / 6], [1 / 2, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)


def test_clip_fraction_and_clipped_gradient_for_hand_ratios():
    ratios = torch.tensor([[1.5, 1.0, 0.5], [0.5, 0.7, 1.0]], dtype=torch.float64)
    old_logp = torch.full((2, 3), -1.0, dtype=torch.float64)
    logp = (old_logp + ratios.log()).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, stats = policy_loss(logp, old_logp, adv, torch.ones(2, 3), clip_eps=0.2)
    # A>0: ratio 1.5 clipped to 1.2 (active); A<0: ratios 0.5, 0.7 raised to 0.8 (active)
    assert stats["clip_fraction"] == pytest.approx(3 / 6)
    assert loss.item() == pytest.approx((-1.2 - 1.0 - 0.5 + 0.8 + 0.8 + 1.0) / 6)
    assert stats["ratio_mean"] == pytest.approx(float(ratios.mean()))
    assert stats["ratio_max"] == pytest.approx(1.5)
    loss.backward()
    clipped = torch.tensor([[True, False, False], [True, True, False]])
    assert torch.all(logp.grad[clipped] == 0)
    assert torch.all(logp.grad[~clipped] != 0)


def test_policy_loss_ignores_garbage_under_the_mask():
    logp = _leaf([[-0.5, NEG_INF], [-0.2, math.nan]])
    adv = torch.tensor([1.0, 1.0], dtype=torch.float64)
    mask = torch.tensor([[True, False], [True, False]])
    for clip in (None, 0.2):
        loss, _ = policy_loss(logp, logp.detach(), adv, mask, clip_eps=clip)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
        logp.grad = None
    with pytest.raises(ValueError, match="old_logp"):
        policy_loss(logp, None, adv, mask, clip_eps=0.2)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logp, None, torch.ones(3), mask)


# ------------------------------------------------------------------------------ KL, entropy
def test_kl_estimators_hand_values():
    logp = torch.tensor([math.log(0.5), math.log(0.25)], dtype=torch.float64)
    ref = torch.tensor([math.log(0.25), math.log(0.5)], dtype=torch.float64)
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([math.log(2), -math.log(2)], dtype=torch.float64))
    # k3 = exp(ref - logp) - (ref - logp) - 1
    expected_k3 = torch.tensor([0.5 + math.log(2) - 1, 2 - math.log(2) - 1], dtype=torch.float64)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), expected_k3)
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k2")


def test_k3_is_nonnegative():
    gen = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(500, generator=gen) * 5, -torch.rand(500, generator=gen) * 5
    assert (kl_penalty(logp, ref, "k3") >= 0).all()


def test_kl_into_reward_and_into_loss():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, NEG_INF], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    per_seq = kl_for_reward(logp.numpy(), ref.numpy(), kind="k1", coef=0.1, mask=mask.numpy())
    assert isinstance(per_seq, np.ndarray) and per_seq.dtype == np.float64
    np.testing.assert_allclose(per_seq, [0.1 * (0.5 - 1.0), 0.0])
    loss, stats = kl_loss(logp.requires_grad_(True), ref, mask, kind="k1", coef=2.0)
    assert stats["kl"] == pytest.approx(-0.5 / 5)
    assert loss.item() == pytest.approx(2.0 * -0.5 / 5)


def test_entropy_uniform_with_disallowed_tokens_is_log_allowed():
    logits = torch.zeros(2, 3, 6, dtype=torch.float64)
    logits[..., 4:] = NEG_INF  # two disallowed tokens at every position
    logits.requires_grad_(True)
    logp_full = torch.log_softmax(logits, dim=-1)
    h = entropy(logp_full)
    assert h.item() == pytest.approx(math.log(4))
    h.backward()
    assert torch.isfinite(logits.grad).all()
    point_mass = torch.full((1, 1, 3), NEG_INF, dtype=torch.float64)
    point_mass[0, 0, 1] = 0.0
    assert entropy(point_mass).item() == 0.0
    # the masked-out position (a point mass, entropy 0) must not pull the mean down
    second = torch.full((6,), NEG_INF, dtype=torch.float64)
    second[0] = 0.0
    mixed = torch.stack([logp_full[0, 0].detach(), second])[None]
    assert entropy(mixed, mask=torch.tensor([[1, 0]])).item() == pytest.approx(math.log(4))
    assert entropy(mixed).item() == pytest.approx(math.log(4) / 2)


# ------------------------------------------------------------------------------ token losses
def _random_logp(n, l, v, seed=0):
    logits = torch.randn(n, l, v, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return logits, torch.log_softmax(logits, dim=-1)


def test_token_ce_matches_torch_cross_entropy():
    logits, logp = _random_logp(3, 4, 5)
    targets = torch.tensor([[0, 1, 2, 3], [4, 0, 1, 2], [3, 3, 3, 3]])
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 2:] = False
    padded = targets.masked_fill(~mask, -100)  # padding ids must not be gathered
    loss, stats = token_ce(logp, padded, mask)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 5), padded.reshape(-1), ignore_index=-100))
    assert 0.0 <= stats["token_acc"] <= 1.0


def test_token_ce_rejects_disallowed_target():
    logp = torch.log(torch.tensor([[[1.0, 0.0]]], dtype=torch.float64))
    with pytest.raises(ValueError, match="position 0 is disallowed"):
        token_ce(logp, torch.tensor([[1]]), torch.ones(1, 1))


def _logp_of(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def test_ntl_was_hand_value_and_zero_at_point_mass():
    values = torch.tensor([[0.0, 1.0]])
    loss, _ = ntl_was(_logp_of([[[0.5, 0.5]]]), torch.tensor([[1]]), torch.ones(1, 1), values)
    assert loss.item() == pytest.approx(0.5)
    zero, _ = ntl_was(_logp_of([[[0.0, 1.0]]]), torch.tensor([[1]]), torch.ones(1, 1), values)
    assert zero.item() == 0.0


def test_ntl_was_renormalises_over_digits_and_skips_non_digit_targets():
    # position 0: tokens (0, 1, sign) with the sign not a digit; position 1: only the sign token
    values = torch.tensor([[0.0, 2.0, math.nan], [math.nan, math.nan, math.nan]])
    logits = torch.log(torch.tensor([[[0.25, 0.25, 0.5], [0.0, 0.0, 1.0]]], dtype=torch.float64))
    logits.requires_grad_(True)
    loss, stats = ntl_was(logits, torch.tensor([[1, 2]]), torch.ones(1, 2), values)
    assert loss.item() == pytest.approx(0.5 * 2.0)  # renormalised p = (0.5, 0.5), |0 - 2| = 2
    assert stats["ntl_positions"] == 1.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_dist2_is_zero_at_soft_label_and_positive_elsewhere():
    values = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    # sigma 1, target value 1: q ∝ exp(-(v - 1)^2) = (e^-1, 1, e^-1, e^-4)
    q = torch.tensor([math.exp(-1), 1.0, math.exp(-1), math.exp(-4)], dtype=torch.float64)
    q = q / q.sum()
    at_q, stats = dist2(q.log()[None, None], torch.tensor([[1]]), torch.ones(1, 1), values)
    assert abs(at_q.item()) < 1e-12
    assert stats["dist2_soft_ce"] == pytest.approx(float(-(q * q.log()).sum()))  # = H(q)
    one_hot, _ = dist2(_logp_of([[[0.01, 0.97, 0.01, 0.01]]]), torch.tensor([[1]]), torch.ones(1, 1), values)
    assert one_hot.item() > 0.1


def test_dist2_falls_back_to_ce_for_non_digit_targets():
    values = torch.tensor([[math.nan, math.nan, math.nan]])
    logits, logp = _random_logp(2, 1, 3, seed=1)
    targets = torch.tensor([[2], [0]])
    loss, _ = dist2(logp, targets, torch.ones(2, 1), values)
    ce, _ = token_ce(logp, targets, torch.ones(2, 1))
    torch.testing.assert_close(loss, ce)


def test_expert_targets_use_each_rollouts_own_prefix():
    calls = []

    def next_id(y, prefix):
        calls.append((y, list(prefix)))
        return (int(y) + len(prefix) + sum(prefix)) % 10

    seqs = np.array([[1, 2, 3], [4, 5, 6]])
    out = expert_targets(torch.as_tensor(seqs), [0.0, 1.0], next_id)
    np.testing.assert_array_equal(out, [[0, 2, 5], [1, 6, 2]])
    assert out.dtype == np.int64
    assert (1.0, [4, 5]) in calls and len(calls) == 6
    with pytest.raises(ValueError, match="y"):
        expert_targets(seqs, [0.0], next_id)


def test_expert_ce_is_token_ce_on_expert_targets():
    _, logp = _random_logp(2, 3, 4, seed=2)
    targets = torch.tensor([[0, 1, 2], [3, 3, 0]])
    loss, stats = expert_ce(logp, targets, torch.ones(2, 3))
    ce, ce_stats = token_ce(logp, targets, torch.ones(2, 3))
    torch.testing.assert_close(loss, ce)
    assert stats["expert_ce"] == ce_stats["token_ce"]


# ------------------------------------------------------------------------------ objectives
def _rl_inputs(seed=3):
    """Policy logprobs [4, 3] of sampled tokens, their full distribution [4, 3, 5], a batch, a reference."""
    logits, logp_full = _random_logp(4, 3, 5, seed=seed)
    logp_full = logp_full.float().requires_grad_(True)
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, 5, (4, 3), generator=gen)
    logp = logp_full.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    batch = LearnerBatch(prompts=[[1, 2]] * 4, tokens=tokens.numpy(), old_logp=(logp.detach() - 0.1).numpy(),
                         advantages=np.array([1.0, -0.5, 0.25, 2.0]), expert=torch.randint(0, 5, (4, 3), generator=gen).numpy())
    ref = (logp.detach() + torch.randn(4, 3, generator=gen) * 0.5).numpy()
    return logp, logp_full, batch, ref


def _options(**changes) -> RLLossOptions:
    base = RLConfig(kl_coef=0.2, kl_in="loss", entropy_coef=0.01, expert_ce_coef=0.05, clip_eps=0.2).loss_options()
    return dataclasses.replace(base, **changes)


def test_kl_kind_has_one_default_k1():
    assert RLConfig().kl_kind == "k1" and RLConfig().loss_options().kl_kind == "k1"
    with pytest.raises(TypeError):
        RLLossOptions(temperature=1.0)  # no field has a default of its own


def test_rl_loss_kl_in_loss_uses_the_options_kind():
    logp, logp_full, batch, ref = _rl_inputs()
    k1, k1_stats = rl_loss(logp, logp_full, batch, _options(kl_kind="k1", entropy_coef=0.0, expert_ce_coef=0.0), ref)
    k3, k3_stats = rl_loss(logp, logp_full, batch, _options(kl_kind="k3", entropy_coef=0.0, expert_ce_coef=0.0), ref)
    mask = torch.ones_like(logp)
    for kind, stats in (("k1", k1_stats), ("k3", k3_stats)):
        _, expected = kl_loss(logp, torch.as_tensor(ref), mask, kind)
        assert stats["kl"] == pytest.approx(expected["kl"])
    assert k1_stats["kl"] != pytest.approx(k3_stats["kl"], abs=1e-4)
    assert k1.item() != pytest.approx(k3.item(), abs=1e-5)
    with pytest.raises(ValueError, match="ref_logp"):
        rl_loss(logp, logp_full, batch, _options())
    # kl_in=reward: the loss has no KL term and needs no reference
    _, stats = rl_loss(logp, logp_full, batch, _options(kl_in="reward"))
    assert "kl" not in stats


def test_rl_loss_is_the_sum_of_its_terms():
    logp, logp_full, batch, ref = _rl_inputs()
    options = _options()
    loss, stats = rl_loss(logp, logp_full, batch, options, ref)
    mask = torch.ones_like(logp)
    pg, _ = policy_loss(logp, torch.as_tensor(batch.old_logp), batch.advantages, mask, options.clip_eps, options.loss_agg)
    kl, _ = kl_loss(logp, torch.as_tensor(ref), mask, options.kl_kind, options.kl_coef, options.loss_agg)
    ce, _ = expert_ce(logp_full, torch.as_tensor(batch.expert), mask)
    expected = pg + kl - options.entropy_coef * entropy(logp_full, mask) + options.expert_ce_coef * ce
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    from_stats = (stats["policy_loss"] + options.kl_coef * stats["kl"] - options.entropy_coef * stats["entropy"]
                  + options.expert_ce_coef * stats["expert_ce"])
    assert loss.item() == pytest.approx(from_stats, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logp_full.grad).all() and logp_full.grad.abs().sum() > 0
    # Terms switched off (or absent from the batch) leave no trace
    plain, plain_stats = rl_loss(logp, logp_full, dataclasses.replace(batch, expert=None),
                                 _options(kl_coef=0.0, entropy_coef=0.0), None)
    assert plain.item() == pytest.approx(pg.item()) and not {"kl", "entropy", "expert_ce"} & set(plain_stats)


def test_supervised_loss_variants():
    _, logp = _random_logp(2, 3, 4, seed=5)
    targets = torch.tensor([[0, 1, 2], [3, 1, 0]])
    values = torch.tensor([[0.0, 1.0, 2.0, float("nan")]] * 3)
    mask = torch.ones(2, 3)
    ce, _ = token_ce(logp, targets, mask)
    ntl, _ = ntl_was(logp, targets, mask, values)
    d2, _ = dist2(logp, targets, mask, values, sigma=0.7)

    def run(loss, **kw):
        return supervised_loss(logp, targets, SFTConfig(loss=loss, **kw).loss_options(), values)

    loss, stats = run("ce")
    assert loss.item() == pytest.approx(ce.item()) and stats == {"ce": pytest.approx(ce.item())}
    loss, stats = run("ntl_was", ntl_weight=0.4)
    assert loss.item() == pytest.approx(ce.item() + 0.4 * ntl.item()) and stats["ntl_was"] == pytest.approx(ntl.item())
    loss, stats = run("dist2", dist2_sigma=0.7)
    assert loss.item() == pytest.approx(d2.item()) and stats["ce"] == pytest.approx(ce.item())
    with pytest.raises(ValueError, match="unknown supervised loss"):
        supervised_loss(logp, targets, SFTLossOptions(loss="mse", ntl_weight=0.0, dist2_sigma=1.0), values)

"""Sequence-level RL losses for the learner: policy gradient (optionally PPO-clipped), KL to a
reference policy, entropy, and rl_loss, the RL objective that composes them (with GenRe²'s expert CE).

Per-token tensors are [N, L] (N = rollouts, L = number tokens) with a `mask` [N, L] that is
1/True for tokens that count. Masked-out entries may hold anything (padding, -inf): they are
replaced by 0 *before* any arithmetic, because a 0 * inf = NaN in the forward or backward pass
of an unselected branch would poison the gradient. Losses return (scalar, {name: float}).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from rlreg.algos.config import RLLossOptions
from rlreg.algos.experience import LearnerBatch
from rlreg.algos.token_losses import expert_ce, masked_zero

LossAgg = Literal["token_mean", "seq_mean"]
KLKind = Literal["k1", "k3"]


def _bool_mask(mask: Tensor, like: Tensor) -> Tensor:
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from tensor shape {tuple(like.shape)}")
    return mask.bool()


def aggregate(per_token: Tensor, mask: Tensor, loss_agg: LossAgg = "token_mean") -> Tensor:
    """Masked mean of per-token values.

    token_mean: sum over all counted tokens / their number (every token weighs the same).
    seq_mean: mean over sequences of each sequence's token mean (every sequence weighs the
    same); sequences without counted tokens are left out. With fixed-length numbers and a
    full mask the two agree."""
    mask = _bool_mask(mask, per_token)
    values = masked_zero(per_token, mask)
    weights = mask.to(per_token.dtype)
    if loss_agg == "token_mean":
        return values.sum() / weights.sum().clamp(min=1.0)
    if loss_agg == "seq_mean":
        counts = weights.sum(dim=1)
        per_seq = values.sum(dim=1) / counts.clamp(min=1.0)
        return per_seq.sum() / (counts > 0).sum().clamp(min=1).to(per_token.dtype)
    raise ValueError(f"loss_agg must be 'token_mean' or 'seq_mean', got {loss_agg!r}")


def policy_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor | np.ndarray,
    mask: Tensor,
    clip_eps: float | None = None,
    loss_agg: LossAgg = "token_mean",
) -> tuple[Tensor, dict[str, float]]:
    """Policy-gradient loss; every token of rollout i gets advantage A_i.

    clip_eps set (PPO): per token max(-A·ratio, -A·clip(ratio, 1-eps, 1+eps)),
    ratio = exp(logp - old_logp), old_logp treated as data. Needed when one batch of rollouts
    is reused for several optimiser steps.
    clip_eps None (REINFORCE, one on-policy step): per token -A·exp(logp - sg(logp)), whose
    value is -A and whose gradient is exactly -A·∇logp, the policy gradient; old_logp is then
    used only for the ratio stats (which show engine-vs-learner logprob mismatch) and may be None.

    Stats: clip_fraction (share of counted tokens where the clipped term is the active one,
    i.e. its gradient is cut off; 0 without clipping), ratio_mean, ratio_max.
    """
    mask = _bool_mask(mask, logp)
    advantages = torch.as_tensor(advantages, device=logp.device)  # NumPy from the estimators is fine
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must have shape [{logp.shape[0]}], got {tuple(advantages.shape)}")
    logp = masked_zero(logp, mask)
    adv = advantages.detach().to(logp.dtype)[:, None]
    stats: dict[str, float] = {}
    ratio = None
    if old_logp is not None:
        old = masked_zero(old_logp.detach().to(logp.dtype), mask)
        ratio = torch.exp(logp - old)
        counted = ratio.detach()[mask]
        stats["ratio_mean"] = float(counted.mean()) if counted.numel() else 1.0
        stats["ratio_max"] = float(counted.max()) if counted.numel() else 1.0
    if clip_eps is None:
        per_token = -adv * torch.exp(logp - logp.detach())
        stats["clip_fraction"] = 0.0
    else:
        if ratio is None:
            raise ValueError("policy_loss with clip_eps needs old_logp")
        if clip_eps <= 0:
            raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
        unclipped = -adv * ratio
        clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
        per_token = torch.maximum(unclipped, clipped)
        n = int(mask.sum())
        stats["clip_fraction"] = float((clipped > unclipped)[mask].sum()) / n if n else 0.0
    loss = aggregate(per_token, mask, loss_agg)
    stats["policy_loss"] = float(loss.detach())
    return loss, stats


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: KLKind) -> Tensor:
    """Per-token estimates of KL(policy ‖ ref) from sampled tokens (Schulman's estimators).

    k1 = logp - ref_logp: unbiased, can be negative per token.
    k3 = exp(ref - logp) - (ref - logp) - 1: unbiased and always >= 0, lower variance."""
    ref_logp = ref_logp.detach().to(logp.dtype)
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        log_ratio = ref_logp - logp
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"KL kind must be 'k1' or 'k3', got {kind!r}")


def kl_loss(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    kind: KLKind,
    coef: float = 1.0,
    loss_agg: LossAgg = "token_mean",
) -> tuple[Tensor, dict[str, float]]:
    """KL in the loss: coef · masked mean of the per-token estimate (GRPO uses k3 here). KL in the
    reward is rlreg.algos.experience.kl_for_reward (NumPy, on the driver)."""
    mask = _bool_mask(mask, logp)
    per_token = kl_penalty(masked_zero(logp, mask), masked_zero(ref_logp, mask), kind)
    kl = aggregate(per_token, mask, loss_agg)
    return coef * kl, {"kl": float(kl.detach())}


def position_entropy(logp_full: Tensor) -> Tensor:
    """Entropy [N, L] of each position's distribution from log-probs [N, L, V] in which
    disallowed tokens are -inf (they contribute 0, not 0 · -inf = NaN)."""
    finite = torch.isfinite(logp_full)
    safe = torch.where(finite, logp_full, torch.zeros((), dtype=logp_full.dtype, device=logp_full.device))
    probs = torch.where(finite, torch.exp(safe), torch.zeros((), dtype=safe.dtype, device=safe.device))
    return -(probs * safe).sum(dim=-1)


def entropy(logp_full: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean per-position entropy over counted positions (all when mask is None); for an
    entropy bonus, add -coef · entropy to the loss."""
    per_position = position_entropy(logp_full)
    if mask is None:
        return per_position.mean()
    return aggregate(per_position, mask, "token_mean")


def rl_loss(logp: Tensor, logp_full: Tensor, batch: LearnerBatch, options: RLLossOptions,
            ref_logp: Tensor | np.ndarray | None = None) -> tuple[Tensor, dict[str, float]]:
    """The RL objective on one shard: sequence-level policy gradient with the batch's advantages,
    plus KL to the frozen reference (kl_in=loss; `ref_logp` [N, L] then required), minus an entropy
    bonus, plus GenRe²'s dense expert CE along each rollout (when the batch carries expert targets).

    logp [N, L]: the current policy's logprobs of batch.tokens; logp_full [N, L, V]: its full
    constrained distribution (disallowed tokens -inf). Every number token counts (fixed length)."""
    mask = torch.ones_like(logp)
    advantages = torch.as_tensor(np.asarray(batch.advantages), dtype=torch.float32, device=logp.device)
    old = None if batch.old_logp is None else \
        torch.as_tensor(np.asarray(batch.old_logp), dtype=torch.float32, device=logp.device)
    loss, stats = policy_loss(logp, old, advantages, mask, options.clip_eps, options.loss_agg)
    stats = dict(stats)
    if options.kl_in_loss:
        if ref_logp is None:
            raise ValueError("rl_loss: kl_in=loss with kl_coef > 0 needs ref_logp")
        ref = torch.as_tensor(ref_logp, device=logp.device)
        kl, kl_stats = kl_loss(logp, ref, mask, options.kl_kind, options.kl_coef, options.loss_agg)
        loss = loss + kl
        stats.update(kl_stats)
    if options.entropy_coef > 0:
        ent = entropy(logp_full, mask)
        loss = loss - options.entropy_coef * ent
        stats["entropy"] = float(ent.detach())
    if options.expert_ce_coef > 0 and batch.expert is not None:
        expert = torch.as_tensor(np.asarray(batch.expert), dtype=torch.long, device=logp.device)
        ce, ce_stats = expert_ce(logp_full, expert, mask)
        loss = loss + options.expert_ce_coef * ce
        stats.update(ce_stats)
    return loss, stats

"""Objectives a learner rank can step on: each maps (rank, batch shard, options) → (loss, stats).

A batch is plain data so it crosses Ray cheaply: `prompts` (list of token-id lists) and
`tokens` (int [N, L] number-token indices), plus what each objective needs."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from rlreg.algos import token_losses
from rlreg.model.logprobs import answer_logits, gather_tokens

OBJECTIVES: dict[str, Callable] = {}


def register_objective(name: str):
    def add(fn):
        OBJECTIVES[name] = fn
        return fn

    return add


def token_values(number_tokenizer) -> torch.Tensor:
    """[L, V]: the digit value of each number token at each position (NaN where it is not a digit
    allowed there) — what NTL and DIST2 measure distances with."""
    values = np.where(number_tokenizer.allowed, number_tokenizer.digit_values[None, :], np.nan)
    return torch.as_tensor(values, dtype=torch.float32)


def policy_logprobs(rank, batch: dict, temperature: float = 1.0, model=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp of the given tokens [N, L], full constrained logp [N, L, V]) under the current model
    (or `model`, e.g. the frozen reference)."""
    tokens = torch.as_tensor(np.asarray(batch["tokens"]), dtype=torch.long, device=rank.device)
    hf_tokens = rank.head.token_ids[tokens]
    features = batch.get("features")
    if features is not None:
        features = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=rank.device)
    logits = answer_logits(model if model is not None else rank.engine, batch["prompts"], hf_tokens,
                           rank.meta.pad_id, features, shared_prefix=rank.cfg.shared_prefix)
    logp_full = rank.head.logprobs(logits, temperature)
    return gather_tokens(logp_full, tokens), logp_full


@register_objective("sft")
def supervised(rank, batch: dict, options: dict):
    """Token-level supervision toward the target's number tokens: CE, or NTL-WAS / DIST2 variants."""
    _, logp = policy_logprobs(rank, batch)
    targets = torch.as_tensor(np.asarray(batch["tokens"]), dtype=torch.long, device=rank.device)
    mask = torch.ones_like(targets, dtype=torch.float32)
    ce, stats = token_losses.token_ce(logp, targets, mask)
    stats = {"ce": float(ce.detach())}
    kind = options.get("loss", "ce")
    if kind == "ce":
        return ce, stats
    values = token_values(rank.number_tokenizer).to(rank.device)
    if kind == "ntl_was":
        ntl, _ = token_losses.ntl_was(logp, targets, mask, values)
        stats["ntl_was"] = float(ntl.detach())
        return ce + options.get("ntl_weight", 0.3) * ntl, stats
    if kind == "dist2":
        loss, _ = token_losses.dist2(logp, targets, mask, values, sigma=options.get("dist2_sigma", 1.0))
        stats["dist2"] = float(loss.detach())
        return loss, stats
    raise ValueError(f"unknown supervised loss {kind!r}")


@register_objective("rl")
def reinforce(rank, batch: dict, options: dict):
    """Sequence-level policy gradient on rollouts with given advantages, plus optional KL to the
    frozen reference, entropy bonus and GenRe²'s dense expert CE along each rollout."""
    from rlreg.algos import losses

    logp, logp_full = policy_logprobs(rank, batch, options.get("temperature", 1.0))
    mask = torch.ones_like(logp)
    advantages = torch.as_tensor(np.asarray(batch["advantages"]), dtype=torch.float32, device=logp.device)
    old = batch.get("old_logp")
    old = None if old is None else torch.as_tensor(np.asarray(old), dtype=torch.float32, device=logp.device)
    loss, stats = losses.policy_loss(logp, old, advantages, mask, options.get("clip_eps"),
                                     options.get("loss_agg", "token_mean"))
    stats = dict(stats)
    if options.get("kl_coef", 0.0) > 0 and options.get("kl_in") == "loss":
        ref = torch.as_tensor(rank.reference_logprobs(batch, options.get("temperature", 1.0)), device=logp.device)
        kl, kl_stats = losses.kl_loss(logp, ref, mask, options.get("kl_kind", "k3"), options["kl_coef"],
                                      options.get("loss_agg", "token_mean"))
        loss = loss + kl
        stats.update(kl_stats)
    if options.get("entropy_coef", 0.0) > 0:
        ent = losses.entropy(logp_full, mask)
        loss = loss - options["entropy_coef"] * ent
        stats["entropy"] = float(ent.detach())
    if options.get("expert_ce_coef", 0.0) > 0 and "expert" in batch:
        expert = torch.as_tensor(np.asarray(batch["expert"]), dtype=torch.long, device=logp.device)
        ce, ce_stats = token_losses.expert_ce(logp_full, expert, mask)
        loss = loss + options["expert_ce_coef"] * ce
        stats.update(ce_stats)
    return loss, stats

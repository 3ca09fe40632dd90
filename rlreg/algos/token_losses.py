"""Token-level losses over the number-token vocabulary (supervised stage, GenRe²'s expert CE).

Inputs: `logp` [N, L, V] log-probabilities over the V number tokens at each of the L
positions, already restricted to the allowed tokens (disallowed = -inf); `targets` [N, L]
long, the target token index per position; `mask` [N, L], 1/True where a position counts.
`token_values` [L, V] float gives each token's digit value at each position and NaN for
tokens that are not digits there (sign, exponent, ... tokens); the distances NTL and DIST2
use are in these units, so the caller picks them (digit value, or digit x place value).
Every loss returns (scalar, {name: float}); the scalar is a mean over counted positions.
supervised_loss composes them into the supervised stage's objective.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rlreg.algos.config import SFTLossOptions


def masked_zero(x: Tensor, mask: Tensor) -> Tensor:
    """x with masked-out entries replaced by 0, before any arithmetic: a 0 * inf = NaN there, even
    in an unselected branch's backward, would poison the gradient (rlreg.algos.losses uses it too)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _checked(logp: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(mask as bool, targets safe to gather, target log-prob [N, L] zeroed where masked)."""
    if logp.ndim != 3 or targets.shape != logp.shape[:2] or mask.shape != logp.shape[:2]:
        raise ValueError(
            f"expected logp [N, L, V] with targets and mask [N, L]; got {tuple(logp.shape)}, "
            f"{tuple(targets.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    # Padded positions may hold -100 or any id: index 0 there, the value is masked anyway.
    safe_targets = torch.where(mask, targets.long(), torch.zeros((), dtype=torch.long, device=targets.device))
    target_logp = logp.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    bad = mask & ~torch.isfinite(target_logp)
    if bad.any():
        n, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"target token {int(safe_targets[n, t])} at row {n}, position {t} is disallowed (-inf log-prob): "
            "targets and the allowed-token table disagree"
        )
    return mask, safe_targets, masked_zero(target_logp, mask)


def _mean_over(per_position: Tensor, counted: Tensor) -> Tensor:
    return masked_zero(per_position, counted).sum() / counted.sum().clamp(min=1).to(per_position.dtype)


def token_ce(logp: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy of the targets; stats: token_ce, token_acc (argmax == target)."""
    mask, safe_targets, target_logp = _checked(logp, targets, mask)
    loss = _mean_over(-target_logp, mask)
    hits = (logp.detach().argmax(dim=-1) == safe_targets) & mask
    acc = float(hits.sum()) / max(int(mask.sum()), 1)
    return loss, {"token_ce": float(loss.detach()), "token_acc": acc}


def _digit_tables(token_values: Tensor, logp: Tensor, safe_targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(is_digit [L, V], values with NaN -> 0 [L, V], target value [N, L] (NaN if not a digit))."""
    if token_values.shape != logp.shape[1:]:
        raise ValueError(f"token_values must have shape {tuple(logp.shape[1:])}, got {tuple(token_values.shape)}")
    values = token_values.to(device=logp.device, dtype=logp.dtype)
    is_digit = ~torch.isnan(values)
    target_value = values.unsqueeze(0).expand(logp.shape[0], -1, -1).gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    return is_digit, torch.nan_to_num(values, nan=0.0), target_value


def ntl_was(logp: Tensor, targets: Tensor, mask: Tensor, token_values: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Number Token Loss, Wasserstein-1 form (Zausinger et al. 2025, "Regress, Don't Guess").

    At a position whose target is a digit, with p the model's distribution renormalised over
    that position's digit tokens: W1(p, point mass at v*) = sum_v p(v)·|v - v*| (the 1-D
    closed form for a point-mass target). Positions whose target is not a digit contribute
    nothing and are left out of the mean. Meant to be added to token_ce, not to replace it.
    """
    mask, safe_targets, _ = _checked(logp, targets, mask)
    is_digit, values, target_value = _digit_tables(token_values, logp, safe_targets)
    counted = mask & ~torch.isnan(target_value)
    support = is_digit.unsqueeze(0) & torch.isfinite(logp)  # [N, L, V]
    # Renormalise with logsumexp over the digit support; rows without support use 0 so that
    # neither the forward nor logsumexp's backward meets -inf - (-inf).
    has_support = support.any(dim=-1, keepdim=True)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    digit_logits = torch.where(support, logp, torch.where(has_support, torch.full_like(logp, -torch.inf), zero))
    log_norm = torch.logsumexp(digit_logits, dim=-1, keepdim=True)
    probs = torch.where(support, torch.exp(digit_logits - log_norm), zero)
    distance = (values.unsqueeze(0) - torch.nan_to_num(target_value, nan=0.0).unsqueeze(-1)).abs()
    w1 = (probs * distance).sum(dim=-1)
    loss = _mean_over(w1, counted)
    return loss, {"ntl_was": float(loss.detach()), "ntl_positions": float(counted.sum())}


def dist2(
    logp: Tensor, targets: Tensor, mask: Tensor, token_values: Tensor, sigma: float = 1.0
) -> tuple[Tensor, dict[str, float]]:
    """KL(q ‖ p) towards a soft label q over digit values: q(v) ∝ exp(-(v - v*)² / sigma²).

    Returned as the KL (soft-label CE minus the entropy of q), so it is ~0 when p = q; the
    gradient equals the soft-label CE's since H(q) is constant. p is the model's distribution
    as given (not renormalised over digits), so mass on non-digit tokens is penalised too.
    q lives on the digit tokens allowed in that row (finite logp), keeping the KL finite.
    Where the target is not a digit, q is the one-hot target and the term is plain CE, so
    dist2 can replace token_ce for number formats with sign/exponent tokens.
    Stats: dist2 (the KL) and dist2_soft_ce.
    """
    if sigma <= 0:
        raise ValueError(f"dist2: sigma must be > 0, got {sigma}")
    mask, safe_targets, _ = _checked(logp, targets, mask)
    is_digit, values, target_value = _digit_tables(token_values, logp, safe_targets)
    with torch.no_grad():
        digit_target = ~torch.isnan(target_value)  # [N, L]
        allowed = torch.isfinite(logp)
        one_hot = torch.zeros_like(allowed).scatter_(-1, safe_targets.unsqueeze(-1), True)
        support = torch.where(digit_target.unsqueeze(-1), is_digit.unsqueeze(0) & allowed, one_hot)
        scores = -((values.unsqueeze(0) - torch.nan_to_num(target_value, nan=0.0).unsqueeze(-1)) ** 2) / sigma**2
        # The target token is always in the support (checked allowed), so no row is all -inf.
        log_q = torch.log_softmax(torch.where(support, scores, torch.full_like(scores, -torch.inf)), dim=-1)
        q = torch.where(support, log_q.exp(), torch.zeros_like(log_q))
        neg_entropy_q = (q * torch.where(support, log_q, torch.zeros_like(log_q))).sum(dim=-1)
    safe_logp = torch.where(support, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
    soft_ce = -(q * safe_logp).sum(dim=-1)
    loss = _mean_over(soft_ce + neg_entropy_q, mask)
    return loss, {"dist2": float(loss.detach()), "dist2_soft_ce": float(_mean_over(soft_ce, mask).detach())}


def expert_ce(logp: Tensor, expert_targets: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
    """GenRe²'s dense expert CE: token CE towards `expert_targets(...)` along each rollout."""
    loss, stats = token_ce(logp, expert_targets, mask)
    return loss, {"expert_ce": stats["token_ce"], "expert_acc": stats["token_acc"]}


def token_values(number_tokenizer) -> Tensor:
    """[L, V]: the digit value of each number token at each position (NaN where it is not a digit
    allowed there) — what NTL and DIST2 measure distances with."""
    values = np.where(number_tokenizer.allowed, number_tokenizer.digit_values[None, :], np.nan)
    return torch.as_tensor(values, dtype=torch.float32)


def supervised_loss(logp_full: Tensor, targets: Tensor, options: SFTLossOptions,
                    token_values: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The supervised objective toward the target's number tokens [N, L] from logp_full [N, L, V]:
    CE, CE + ntl_weight · NTL-WAS, or DIST2. Stats: ce, and the variant's own term."""
    mask = torch.ones_like(targets, dtype=torch.float32)
    ce, _ = token_ce(logp_full, targets, mask)
    stats = {"ce": float(ce.detach())}
    if options.loss == "ce":
        return ce, stats
    values = token_values.to(logp_full.device)
    if options.loss == "ntl_was":
        ntl, _ = ntl_was(logp_full, targets, mask, values)
        stats["ntl_was"] = float(ntl.detach())
        return ce + options.ntl_weight * ntl, stats
    if options.loss == "dist2":
        loss, _ = dist2(logp_full, targets, mask, values, sigma=options.dist2_sigma)
        stats["dist2"] = float(loss.detach())
        return loss, stats
    raise ValueError(f"unknown supervised loss {options.loss!r}")

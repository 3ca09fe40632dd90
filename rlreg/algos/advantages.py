"""Advantage estimators: group rewards [B, G] (+ greedy rewards [B]) -> advantages [B, G].

One registry so the RL loop and configs pick an estimator by name. Each entry also says
whether it needs the greedy decode's reward, so the loop only pays for a greedy pass when
the estimator uses it (ReMax). NumPy float64 throughout: these arrays are small and the
learner converts them to tensors once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from rlreg.errors import ConfigError

AdvantageFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class AdvantageEntry:
    name: str
    fn: AdvantageFn
    needs_greedy: bool


ADVANTAGES: dict[str, AdvantageEntry] = {}


def register_advantage(name: str, needs_greedy: bool = False) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: `fn(rewards [B, G], baseline_rewards [B] | None, eps) -> [B, G]` under `name`."""

    def decorate(fn: AdvantageFn) -> AdvantageFn:
        if name in ADVANTAGES and ADVANTAGES[name].fn is not fn:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGES[name] = AdvantageEntry(name, fn, needs_greedy)
        return fn

    return decorate


def advantage_names() -> list[str]:
    return sorted(ADVANTAGES)


def _entry(name: str) -> AdvantageEntry:
    if name not in ADVANTAGES:
        raise ConfigError(f"unknown advantage estimator {name!r} (known: {advantage_names()})")
    return ADVANTAGES[name]


def get_advantage(name: str) -> AdvantageFn:
    return _entry(name).fn


def needs_greedy(name: str) -> bool:
    """True when the estimator needs `baseline_rewards` from a greedy decode of each input."""
    return _entry(name).needs_greedy


def _as_group_rewards(rewards: np.ndarray, name: str) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < 1:
        raise ValueError(f"{name}: rewards must have shape [B, G], got {r.shape}")
    # A NaN here would silently turn the whole group's gradient into NaN: the reward pool
    # must have replaced failed decodes by a penalty before this point.
    if not np.isfinite(r).all():
        raise ValueError(f"{name}: rewards hold {int((~np.isfinite(r)).sum())} NaN/inf values")
    return r


@register_advantage("remax", needs_greedy=True)
def remax(rewards: np.ndarray, baseline_rewards: np.ndarray | None, eps: float = 1e-6) -> np.ndarray:
    """ReMax: r - r_greedy, the greedy decode's reward as a per-input baseline."""
    r = _as_group_rewards(rewards, "remax")
    if baseline_rewards is None:
        raise ValueError("remax needs baseline_rewards (the greedy decode's reward per input)")
    b = np.asarray(baseline_rewards, dtype=np.float64)
    if b.shape != (r.shape[0],):
        raise ValueError(f"remax: baseline_rewards must have shape [{r.shape[0]}], got {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError("remax: baseline_rewards hold NaN/inf values")
    return r - b[:, None]


@register_advantage("grpo")
def grpo(rewards: np.ndarray, baseline_rewards: np.ndarray | None = None, eps: float = 1e-6) -> np.ndarray:
    """GRPO: (r - group mean) / (group std + eps), population std (ddof=0).

    A group whose rewards are all equal gets zero advantages (0 / eps)."""
    r = _as_group_rewards(rewards, "grpo")
    centred = r - r.mean(axis=1, keepdims=True)
    return centred / (r.std(axis=1, ddof=0, keepdims=True) + eps)


@register_advantage("rloo")
def rloo(rewards: np.ndarray, baseline_rewards: np.ndarray | None = None, eps: float = 1e-6) -> np.ndarray:
    """RLOO: r_i - mean of the other G-1 rewards of its group (an unbiased baseline)."""
    r = _as_group_rewards(rewards, "rloo")
    g = r.shape[1]
    if g < 2:
        raise ValueError(f"rloo needs at least 2 samples per input, got G={g}")
    others_mean = (r.sum(axis=1, keepdims=True) - r) / (g - 1)
    return r - others_mean


@register_advantage("drgrpo")
def drgrpo(rewards: np.ndarray, baseline_rewards: np.ndarray | None = None, eps: float = 1e-6) -> np.ndarray:
    """Dr. GRPO: r - group mean, without GRPO's std division (which biases towards easy inputs).

    Dr. GRPO also sums tokens with a constant normaliser; with fixed-length numbers the
    learner's `token_mean` aggregation is that up to a constant."""
    r = _as_group_rewards(rewards, "drgrpo")
    return r - r.mean(axis=1, keepdims=True)

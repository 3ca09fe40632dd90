"""AlgoConfig: the algorithm keys of the `rl:` config section (advantage, loss terms).
The reward function has its own section (rlreg.actors.config.RewardConfig).

The RL loop's own config (steps, group size, learning rate, ...) can inherit from or embed
this; errors name keys as `rl.<key>`. Only scalar fields, so dotted CLI overrides reach all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from rlreg.algos.advantages import advantage_names
from rlreg.errors import ConfigError


@dataclass
class AlgoConfig:
    advantage: str = "remax"  # registry name: remax | grpo | rloo | drgrpo
    adv_eps: float = 1e-6  # GRPO's std guard
    clip_eps: float | None = None  # None: plain REINFORCE (one on-policy step per batch)
    loss_agg: str = "token_mean"  # token_mean | seq_mean
    kl_coef: float = 0.0  # GenRe² uses no KL
    kl_kind: str = "k1"  # k1 | k3
    kl_in: str = "reward"  # reward (per-sequence sum subtracted from r) | loss (mean, times kl_coef)
    entropy_coef: float = 0.0  # bonus: loss -= entropy_coef * entropy
    expert_ce_coef: float = 0.05  # GenRe²'s dense expert CE weight; 0 turns it off
    std_filter_tol: float | None = None  # drop groups whose reward std <= tol; None keeps all

    def validate(self) -> "AlgoConfig":
        """Raise ConfigError naming the first bad key; returns self for chaining."""
        if self.advantage not in advantage_names():
            raise ConfigError(f"rl.advantage must be one of {advantage_names()}, got {self.advantage!r}")
        for key, choices in (("loss_agg", ("token_mean", "seq_mean")), ("kl_kind", ("k1", "k3")), ("kl_in", ("reward", "loss"))):
            if getattr(self, key) not in choices:
                raise ConfigError(f"rl.{key} must be one of {list(choices)}, got {getattr(self, key)!r}")
        for key in ("adv_eps", "kl_coef", "entropy_coef", "expert_ce_coef", "clip_eps", "std_filter_tol"):
            value = getattr(self, key)
            if value is None and key in ("clip_eps", "std_filter_tol"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"rl.{key} must be a finite number >= 0, got {value!r}")
        if self.clip_eps is not None and not 0 < self.clip_eps < 1:
            raise ConfigError(f"rl.clip_eps must be in (0, 1) or null, got {self.clip_eps!r}")
        return self


@dataclass(frozen=True)
class RLLossOptions:
    """What the learner's RL objective reads. No defaults here: every value comes from the `rl:`
    section (RLConfig.loss_options), so each setting has exactly one default, in AlgoConfig/RLConfig."""

    temperature: float
    clip_eps: float | None
    loss_agg: str
    kl_coef: float
    kl_kind: str
    kl_in: str
    entropy_coef: float
    expert_ce_coef: float

    @property
    def kl_in_loss(self) -> bool:
        return self.kl_coef > 0 and self.kl_in == "loss"


@dataclass(frozen=True)
class SFTLossOptions:
    """What the supervised objective reads; built by SFTConfig.loss_options."""

    loss: str
    ntl_weight: float
    dist2_sigma: float

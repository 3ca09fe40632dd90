"""Settings of the three actor roles and of the Ray session they run in: the `ray:`, `learner:`
and `reward:` config sections. Plain dataclasses: loading a config imports neither Ray nor torch."""
from __future__ import annotations

from dataclasses import dataclass, field

from rlreg.algos.rewards import load_reward
from rlreg.errors import ConfigError

REWARD_SPACES = ("z", "original", "scaled")


@dataclass
class RayConfig:
    address: str | None = None  # None: join RAY_ADDRESS if set (inside `ray job submit`), else start locally
    num_cpus: int | None = None  # for a local session; None = all cores
    rollout_cpus: float = 0.5  # logical CPUs per rollout actor (fractions let roles share 2 cores)
    reward_cpus: float = 0.1
    learner_cpus: float = 0.5
    torch_threads: int = 0  # 0: as many as cores, set explicitly inside every actor
    actor_start_timeout_s: float = 300.0
    call_timeout_s: float = 900.0
    # Replacements of a dead or hung rollout worker, and restores of a lost learner group, per run
    # before it stops with an error (reward actors retry a failed chunk on a fresh actor each time).
    max_restarts: int = 3
    # Custom Ray resources each rollout actor / learner rank also requests, e.g. {node_a: 0.1}
    # to place a role on nodes started with `--resources '{"node_a": 1}'` (multi-node placement).
    rollout_resources: dict = field(default_factory=dict)
    learner_resources: dict = field(default_factory=dict)

    def validate(self) -> None:
        for key in ("rollout_cpus", "reward_cpus", "learner_cpus", "actor_start_timeout_s", "call_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"ray.{key} must be > 0, got {getattr(self, key)}")
        if self.max_restarts < 0:
            raise ConfigError(f"ray.max_restarts must be >= 0, got {self.max_restarts}")
        for key in ("rollout_resources", "learner_resources"):
            for name, amount in getattr(self, key).items():
                if name in ("CPU", "GPU", "memory") or isinstance(amount, bool) \
                        or not isinstance(amount, (int, float)) or amount <= 0:
                    raise ConfigError(f"ray.{key}: '{name}: {amount!r}' must name a custom resource with an "
                                      f"amount > 0 (CPUs/GPUs come from ray.*_cpus and the device)")


@dataclass
class LearnerConfig:
    world_size: int = 1
    zero_stage: int = 1
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    bf16: bool = False
    # Encode each prompt once for its G samples (exact: same loss and gradients as the plain forward).
    shared_prefix: bool = True
    betas: list[float] | None = None

    def validate(self) -> None:
        if self.world_size < 1:
            raise ConfigError(f"learner.world_size must be >= 1, got {self.world_size}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"learner.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"learner.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


@dataclass
class RewardConfig:
    """Rewards are computed in a chosen space (default: z-space, the paper's −(ŷ−y)² on z-scored
    targets). Invalid sequences get `invalid_penalty`; a reward function that raises, returns
    NaN/inf or hangs past its timeout gets `failure_penalty` for that batch."""

    fn: str = "neg_mse"  # registry name or module:function / file.py:function
    options: dict = field(default_factory=dict)  # keyword options of the function, e.g. {clip: 10}
    space: str = "z"  # z (z-scored targets) | original (units of the data) | scaled (the tokenizer's space)
    workers: int = 2
    invalid_penalty: float = -10.0
    failure_penalty: float = -10.0
    timeout_s: float = 30.0  # one reward-function call

    def validate(self) -> None:
        if self.space not in REWARD_SPACES:
            raise ConfigError(f"reward.space must be one of {', '.join(REWARD_SPACES)}, got {self.space!r}")
        if self.workers < 1:
            raise ConfigError(f"reward.workers must be >= 1, got {self.workers}")
        if self.timeout_s <= 0:
            raise ConfigError(f"reward.timeout_s must be > 0, got {self.timeout_s}")
        load_reward(self.fn, **self.options)  # fail at config time, naming the function

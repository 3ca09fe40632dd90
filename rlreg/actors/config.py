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
    # GPU clusters: learner rank i and rollout engine i share GPU i (one placement group, half a GPU
    # each in Ray's books), the engines sleeping while the learner updates (rlreg.actors.placement).
    colocate: bool = False
    # GPU share of each rollout engine / learner rank when not colocated (GPU runs only): below 1,
    # actors share a GPU without sleeping (e.g. 0.5 each: one engine and one rank on one GPU; give
    # the engine an engine.gpu_memory_utilization that leaves the rank room). Two learner ranks
    # must not share one GPU: NCCL refuses two members of a group on one device.
    rollout_gpus: float = 1.0
    learner_gpus: float = 1.0

    def validate(self) -> None:
        for key in ("rollout_cpus", "reward_cpus", "learner_cpus", "actor_start_timeout_s", "call_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"ray.{key} must be > 0, got {getattr(self, key)}")
        for key in ("rollout_gpus", "learner_gpus"):
            if not 0 < getattr(self, key) <= 1:
                raise ConfigError(f"ray.{key} must be in (0, 1], got {getattr(self, key)}")
        if self.max_restarts < 0:
            raise ConfigError(f"ray.max_restarts must be >= 0, got {self.max_restarts}")
        for key in ("rollout_resources", "learner_resources"):
            for name, amount in getattr(self, key).items():
                if name in ("CPU", "GPU", "memory") or isinstance(amount, bool) \
                        or not isinstance(amount, (int, float)) or amount <= 0:
                    raise ConfigError(f"ray.{key}: '{name}: {amount!r}' must name a custom resource with an "
                                      f"amount > 0 (CPUs/GPUs come from ray.*_cpus and the device)")
        if self.colocate:
            from rlreg import device
            from rlreg.actors.placement import COLOCATE_NEEDS_GPUS

            if not device.has_cuda():  # asks torch only when colocate is on and RLREG_DEVICE is unset
                raise ConfigError(COLOCATE_NEEDS_GPUS)


@dataclass
class LearnerConfig:
    world_size: int = 1
    zero_stage: int = 1
    weight_decay: float = 0.0
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    # DeepSpeed bf16 mixed precision (fp32 master weights and Adam states). None: on when the start
    # model is stored in bfloat16 (model.dtype), see rlreg.device.learner_bf16.
    bf16: bool | None = None
    # Encode each prompt once for its G samples (exact: same loss and gradients as the plain forward).
    shared_prefix: bool = True
    betas: list[float] | None = None
    # Rows per forward/backward pass on a rank: the passes' gradients accumulate into one optimizer
    # step equal to the one-pass step, with activations held for one micro-batch at a time.
    # 0/None: the rank's whole shard in one pass.
    micro_batch_size: int | None = 0
    # Recompute each decoder layer's activations in the backward pass instead of keeping them.
    gradient_checkpointing: bool = False
    # DeepSpeed ZeRO-Offload to host memory: optimizer states (ZeRO 1-3) / parameters (ZeRO-3).
    offload_optimizer: bool = False
    offload_params: bool = False

    def validate(self) -> None:
        if self.world_size < 1:
            raise ConfigError(f"learner.world_size must be >= 1, got {self.world_size}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"learner.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"learner.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.micro_batch_size is not None and (isinstance(self.micro_batch_size, bool)
                                                  or not isinstance(self.micro_batch_size, int)
                                                  or self.micro_batch_size < 0):
            raise ConfigError(f"learner.micro_batch_size must be a whole number >= 0 (0: the whole shard in one "
                              f"pass), got {self.micro_batch_size!r}")
        if self.gradient_checkpointing and self.shared_prefix:
            # transformers drops the KV cache inside checkpointed layers (they would write it again
            # on the recompute), and the shared-prefix forward's completions attend to the prompt
            # through that cache: together its training forward finds no cache and fails.
            raise ConfigError("learner.gradient_checkpointing and learner.shared_prefix cannot both be on "
                              "(checkpointed layers keep no KV cache, which the shared-prefix forward needs): "
                              "set learner.shared_prefix=false to use gradient checkpointing")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError("learner.offload_optimizer needs ZeRO (learner.zero_stage 1, 2 or 3), got zero_stage 0")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError(f"learner.offload_params needs learner.zero_stage=3 (only ZeRO-3 partitions the "
                              f"parameters), got zero_stage {self.zero_stage}")


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


SYNC_ROUTES = ("auto", "collective", "object_store")


@dataclass
class SyncConfig:
    """The `sync:` section: how new weights reach the engines after a learner update
    (rlreg.actors.weight_sync). "collective": learner rank 0 broadcasts them bucket by bucket over a
    process group of its own with every engine worker (nccl on GPU, gloo on CPU), in the training
    dtype. "object_store": rank 0 puts the whole state dict into Ray's object store once and every
    engine reads it there. "auto": collective on GPU; object_store on CPU, where both move the same
    bytes through host memory and the object store needs no group (benchmarks/README.md, sync), and
    for vector input (data.input: vector), whose feature encoder lives beside the engine."""

    route: str = "auto"
    bucket_mb: float = 64.0  # collective: the most bytes of parameters gathered and sent at once
    timeout_s: float = 120.0  # collective: the longest wait on any one group operation

    def resolved_route(self, takes_features: bool) -> str:
        """sync.route with "auto" decided: collective on GPU, object_store on CPU and for vector input."""
        from rlreg import device

        if self.route == "collective" and takes_features:
            raise ConfigError("sync.route: collective does not carry the feature encoder of vector input "
                              "(data.input: vector), which lives beside each engine; use sync.route: object_store "
                              "(or auto)")
        if self.route != "auto":
            return self.route
        return "collective" if device.has_cuda() and not takes_features else "object_store"

    def validate(self) -> None:
        if self.route not in SYNC_ROUTES:
            raise ConfigError(f"sync.route must be one of {', '.join(SYNC_ROUTES)}, got {self.route!r}")
        for key in ("bucket_mb", "timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"sync.{key} must be > 0, got {getattr(self, key)}")

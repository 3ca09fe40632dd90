"""Where the learner ranks and the rollout engines go: Ray bundles and per-actor requests, planned
from the config alone (no Ray import), so the plan is checked before any actor starts.

Separate (ray.colocate: false, the default): one bundle per learner rank, {CPU: ray.learner_cpus,
GPU: 1 on GPU}; the engines are scheduled outside the group, one GPU each (rlreg.actors.rollout).

Colocated (ray.colocate: true, GPU clusters): one bundle per GPU, {GPU: 1, CPU: learner_cpus +
rollout_cpus}; learner rank i and engine i both go into bundle i, each asking for half of its GPU.
The halves are Ray's bookkeeping only (both processes see the whole GPU): what makes them fit is
that the engine sleeps (vLLM sleep mode, level 1: weights to host memory, KV cache dropped) while
the learner updates, and that its engine.gpu_memory_utilization leaves the learner's weights,
master weights and optimizer states room while it is awake. Hence as many engines as ranks: an
engine without a rank would hold a GPU alone, a rank without an engine would idle in rollouts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlreg.errors import ConfigError

COLOCATED_GPU_SHARE = 0.5  # each of the two actors sharing a GPU: rank i and engine i
COLOCATE_NEEDS_GPUS = ("ray.colocate needs GPUs: vLLM's sleep mode, which frees an engine's memory while the "
                       "learner ranks sharing its GPU train, is GPU-only (the CPU build cannot free its memory); "
                       "set ray.colocate=false on CPU, or RLREG_DEVICE=gpu for a GPU cluster")


@dataclass(frozen=True)
class ActorPlacement:
    bundle: int | None  # index into PlacementPlan.bundles; None: scheduled outside the group
    num_cpus: float
    num_gpus: float
    resources: dict = field(default_factory=dict)  # custom Ray resources (ray.*_resources)


@dataclass(frozen=True)
class PlacementPlan:
    bundles: list[dict]  # the placement group's bundles
    strategy: str
    learners: list[ActorPlacement]  # rank r at index r
    engines: list[ActorPlacement]  # rollout worker w at index w
    colocated: bool

    def total(self, resource: str) -> float:
        """How much of a resource (CPU, GPU) the learner ranks and engines ask for together."""
        return sum(a.num_cpus if resource == "CPU" else a.num_gpus for a in (*self.learners, *self.engines))


@dataclass(frozen=True)
class SharedPlacement:
    """A placement group reserved from a plan's bundles, handed to the learner and rollout groups
    (ray.colocate): each places its actors by the plan's bundle indices."""

    group: Any  # ray.util.placement_group.PlacementGroup
    plan: PlacementPlan


def plan_placement(world_size: int, engines: int, *, gpu: bool, learner_cpus: float, rollout_cpus: float,
                   colocate: bool = False, engine_gpu_memory: float | None = None,
                   learner_resources: dict | None = None, rollout_resources: dict | None = None,
                   learner_gpus: float = 1.0, rollout_gpus: float = 1.0) -> PlacementPlan:
    """The plan for `world_size` learner ranks and `engines` rollout engines. `gpu`: whether the run
    uses CUDA (rlreg.device.has_cuda); `engine_gpu_memory`: engine.gpu_memory_utilization, checked
    against the engine's share of a colocated GPU."""
    learner_resources, rollout_resources = dict(learner_resources or {}), dict(rollout_resources or {})
    if not colocate:
        learner_bundle = {"CPU": learner_cpus, **learner_resources, **({"GPU": learner_gpus} if gpu else {})}
        return PlacementPlan(
            bundles=[dict(learner_bundle) for _ in range(world_size)], strategy="PACK",
            learners=[ActorPlacement(r, learner_cpus, learner_gpus if gpu else 0.0, learner_resources)
                      for r in range(world_size)],
            engines=[ActorPlacement(None, rollout_cpus, rollout_gpus if gpu else 0.0, rollout_resources)
                     for _ in range(engines)],
            colocated=False)
    if not gpu:
        raise ConfigError(COLOCATE_NEEDS_GPUS)
    if engines != world_size:
        raise ConfigError(f"ray.colocate puts learner rank i and rollout engine i on GPU i, so it needs as many engines "
                          f"as ranks: rl.rollout_workers={engines}, learner.world_size={world_size}")
    if engine_gpu_memory is not None and engine_gpu_memory > COLOCATED_GPU_SHARE:
        raise ConfigError(f"ray.colocate: engine.gpu_memory_utilization={engine_gpu_memory:g} would leave the learner "
                          f"rank sharing the GPU {1 - engine_gpu_memory:.0%} of it while the engine is awake (during "
                          f"weight syncs and rollouts the rank keeps its weights and optimizer states): set it to at "
                          f"most {COLOCATED_GPU_SHARE:g}")
    shared = dict(learner_resources)
    for name, amount in rollout_resources.items():
        shared[name] = shared.get(name, 0) + amount
    bundle = {"GPU": 1, "CPU": learner_cpus + rollout_cpus, **shared}
    return PlacementPlan(
        bundles=[dict(bundle) for _ in range(world_size)], strategy="PACK",
        learners=[ActorPlacement(i, learner_cpus, COLOCATED_GPU_SHARE, learner_resources) for i in range(world_size)],
        engines=[ActorPlacement(i, rollout_cpus, COLOCATED_GPU_SHARE, rollout_resources) for i in range(engines)],
        colocated=True)


def plan_for(cfg) -> PlacementPlan:
    """The plan for a RunConfig's RL stage on this process's device choice."""
    from rlreg import device

    ray_cfg = cfg.ray
    return plan_placement(cfg.learner.world_size, cfg.rl.rollout_workers, gpu=device.has_cuda(),
                          learner_cpus=ray_cfg.learner_cpus, rollout_cpus=ray_cfg.rollout_cpus,
                          colocate=ray_cfg.colocate, engine_gpu_memory=cfg.engine.gpu_memory_utilization,
                          learner_resources=ray_cfg.learner_resources, rollout_resources=ray_cfg.rollout_resources,
                          learner_gpus=ray_cfg.learner_gpus, rollout_gpus=ray_cfg.rollout_gpus)

"""The learner ranks and the engines in ONE placement group, each in the bundle its plan names: what
ray.colocate does on GPU clusters (where rank i and engine i share bundle i's GPU, the engine
sleeping during updates). CPU cannot sleep an engine, so this runs the same wiring with CPU-only
bundles: the actors land where the plan says, and weights still reach the engine by process group."""
import pytest
from parity import engine_learner_gap

from rlreg.config import load_config

pytestmark = pytest.mark.engine


def _free_cpu(group_id: str, bundle: int) -> float:
    """CPUs still free in one bundle of a placement group (Ray names them CPU_group_<index>_<id>)."""
    import ray

    return round(ray.available_resources().get(f"CPU_group_{bundle}_{group_id}", 0.0), 3)


def _free_cpus(group_id: str, expected: tuple, timeout_s: float = 60.0) -> tuple:
    """Both bundles' free CPUs once they read `expected`, or as they read at the timeout: Ray's
    resource view is refreshed asynchronously, and lags by seconds on a loaded machine."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        free = (_free_cpu(group_id, 0), _free_cpu(group_id, 1))
        if free == expected or time.monotonic() > deadline:
            return free
        time.sleep(0.5)


def test_ranks_and_engines_go_into_the_bundles_of_a_shared_plan(ray_session, tiny_task, tiny_cfg):
    from rlreg.actors.config import SyncConfig
    from rlreg.actors.learner import LearnerGroup
    from rlreg.actors.placement import ActorPlacement, PlacementPlan
    from rlreg.actors.rollout import RolloutGroup
    from rlreg.actors.session import release_shared_placement, reserve_shared_placement
    from rlreg.actors.weight_sync import CollectiveSync

    cfg = load_config(None, ["ray.actor_start_timeout_s=600"])
    plan = PlacementPlan(bundles=[{"CPU": 0.4}, {"CPU": 0.4}], strategy="PACK",
                         learners=[ActorPlacement(1, 0.4, 0.0)], engines=[ActorPlacement(0, 0.4, 0.0)], colocated=False)
    shared = reserve_shared_placement(plan, cfg.ray)
    learner = rollout = None
    try:
        group_id = shared.group.id.hex()
        assert _free_cpus(group_id, (0.4, 0.4)) == (0.4, 0.4)
        learner = LearnerGroup(tiny_task.model_dir, cfg.learner, 1e-3, 10, cfg.ray, shared=shared)
        assert _free_cpus(group_id, (0.4, 0.0)) == (0.4, 0.0)  # the rank took bundle 1
        rollout = RolloutGroup(tiny_task.model_dir, tiny_cfg.engine, tiny_cfg.model.max_positions, cfg.ray,
                               shared=shared)
        assert _free_cpus(group_id, (0.0, 0.0)) == (0.0, 0.0)  # the engine bundle 0

        sync = CollectiveSync(SyncConfig(route="collective"))
        sync.sync(learner, rollout)
        assert sync.backend == "gloo"
        assert engine_learner_gap(tiny_task, rollout, learner, rows=3) < 1e-3
    finally:
        for part in (rollout, learner):
            if part is not None:
                part.shutdown()
        release_shared_placement(shared)

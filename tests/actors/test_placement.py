"""rlreg.actors.placement: the bundles and per-actor requests of separate and colocated runs, and
the errors that stop a colocated run before any actor starts."""
import pytest

from rlreg import device
from rlreg.actors.placement import COLOCATED_GPU_SHARE, plan_placement
from rlreg.config import load_config
from rlreg.errors import ConfigError


# Each case decides the device anew (tests/conftest.py: fresh_choice).
pytestmark = pytest.mark.usefixtures("fresh_choice")


def _sums_per_bundle(plan, key: str) -> list[float]:
    sums = [0.0] * len(plan.bundles)
    for actor in plan.learners + plan.engines:
        if actor.bundle is not None:
            sums[actor.bundle] += getattr(actor, key)
    return sums


@pytest.mark.parametrize("gpu", [False, True])
def test_separate_mode_has_one_bundle_per_rank_and_engines_outside(gpu):
    plan = plan_placement(3, 2, gpu=gpu, learner_cpus=0.5, rollout_cpus=0.25, learner_resources={"node_a": 0.1})
    assert not plan.colocated and len(plan.bundles) == 3
    assert plan.bundles[0] == {"CPU": 0.5, "node_a": 0.1, **({"GPU": 1} if gpu else {})}
    assert [a.bundle for a in plan.learners] == [0, 1, 2]
    assert [a.bundle for a in plan.engines] == [None, None]
    assert {a.num_gpus for a in plan.learners + plan.engines} == {1.0 if gpu else 0.0}


def test_colocated_mode_shares_each_gpu_between_rank_i_and_engine_i():
    plan = plan_placement(4, 4, gpu=True, learner_cpus=2, rollout_cpus=3, colocate=True,
                          learner_resources={"gpu_node": 0.5}, rollout_resources={"gpu_node": 0.25})
    assert plan.colocated and len(plan.bundles) == 4
    assert plan.bundles[2] == {"GPU": 1, "CPU": 5, "gpu_node": 0.75}
    assert [a.bundle for a in plan.learners] == [0, 1, 2, 3] == [a.bundle for a in plan.engines]
    assert {a.num_gpus for a in plan.learners + plan.engines} == {COLOCATED_GPU_SHARE}
    # what the actors in a bundle ask for fits in it
    assert all(s <= 1.0 for s in _sums_per_bundle(plan, "num_gpus"))
    assert _sums_per_bundle(plan, "num_cpus") == [b["CPU"] for b in plan.bundles]


def test_colocate_needs_as_many_engines_as_ranks():
    with pytest.raises(ConfigError, match=r"rl.rollout_workers=2, learner.world_size=4"):
        plan_placement(4, 2, gpu=True, learner_cpus=1, rollout_cpus=1, colocate=True)


def test_colocate_needs_room_for_the_learner_beside_the_engine():
    with pytest.raises(ConfigError, match="engine.gpu_memory_utilization=0.9 .* at most 0.5"):
        plan_placement(1, 1, gpu=True, learner_cpus=1, rollout_cpus=1, colocate=True, engine_gpu_memory=0.9)
    assert plan_placement(1, 1, gpu=True, learner_cpus=1, rollout_cpus=1, colocate=True,
                          engine_gpu_memory=0.45).colocated


def test_colocate_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match=r"ray.colocate needs GPUs: vLLM's sleep mode.*CPU build cannot free"):
        plan_placement(1, 1, gpu=False, learner_cpus=1, rollout_cpus=1, colocate=True)


def test_colocate_is_checked_when_the_config_loads(fresh_choice):
    fresh_choice.setenv("RLREG_DEVICE", "cpu")
    with pytest.raises(ConfigError, match="ray.colocate needs GPUs"):
        load_config(None, ["ray.colocate=true"])
    fresh_choice.setenv("RLREG_DEVICE", "gpu")
    device.has_cuda.cache_clear()
    with pytest.raises(ConfigError, match="as many engines as ranks"):
        load_config(None, ["ray.colocate=true", "rl.rollout_workers=1", "learner.world_size=2"])
    with pytest.raises(ConfigError, match="engine.gpu_memory_utilization=0.9"):
        load_config(None, ["ray.colocate=true"])
    cfg = load_config(None, ["ray.colocate=true", "engine.gpu_memory_utilization=0.4"])
    assert cfg.ray.colocate and not load_config(None, []).ray.colocate

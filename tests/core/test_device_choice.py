"""rlreg.device: RLREG_DEVICE decides for the planning process (a CPU-only head with RLREG_DEVICE=gpu
plans nccl and GPU resources); a process that computes on a GPU checks CUDA is really there."""
import pytest
import torch

from rlreg import device
from rlreg.config import load_config
from rlreg.errors import ConfigError


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch):
    """Each case decides anew (has_cuda and the CUDA check are cached per process)."""
    monkeypatch.delenv("RLREG_DEVICE", raising=False)

    def clear():
        device.has_cuda.cache_clear()
        device._require_cuda.cache_clear()

    clear()
    yield monkeypatch
    clear()


def _torch_sees_cuda(monkeypatch, available: bool) -> list:
    calls = []

    def is_available() -> bool:
        calls.append(1)
        return available

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    return calls


@pytest.mark.parametrize("available", [False, True])
def test_unset_follows_torch(fresh_choice, available):
    _torch_sees_cuda(fresh_choice, available)
    assert device.has_cuda() is available
    assert device.dist_backend() == ("nccl" if available else "gloo")
    assert device.device_name() == ("cuda" if available else "cpu")


def test_cpu_wins_even_with_cuda_present(fresh_choice):
    calls = _torch_sees_cuda(fresh_choice, True)
    fresh_choice.setenv("RLREG_DEVICE", "cpu")
    assert device.has_cuda() is False
    assert (device.device_name(), device.dist_backend(), device.ray_gpus_per_actor(1.0)) == ("cpu", "gloo", 0.0)
    assert device.engine_env()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert device.engine_env("separate")["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert calls == []


@pytest.mark.parametrize("value", ["gpu", "GPU", "cuda"])
def test_gpu_on_a_head_without_cuda_plans_gpus(fresh_choice, value):
    calls = _torch_sees_cuda(fresh_choice, False)
    fresh_choice.setenv("RLREG_DEVICE", value)
    assert device.has_cuda() is True
    assert device.ray_gpus_per_actor(1.0) == 1.0
    # GPU vLLM: its engine core in its own process unless engine.process says otherwise
    assert device.engine_env()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert device.engine_env("inline")["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert calls == []  # decided without asking this process's torch


def test_gpu_head_sizes_the_rl_stage_with_gpus(fresh_choice):
    _torch_sees_cuda(fresh_choice, False)
    fresh_choice.setenv("RLREG_DEVICE", "gpu")
    asked = []
    fresh_choice.setattr("rlreg.actors.session.require_resources", lambda cpus, gpus, what: asked.append(gpus))
    from rlreg.train.rl import require_rl_resources

    cfg = load_config(None, ["rl.rollout_workers=2", "learner.world_size=3"])
    require_rl_resources(cfg)
    assert asked == [5.0]


def test_gpu_actor_on_a_node_without_cuda_fails_clearly(fresh_choice):
    _torch_sees_cuda(fresh_choice, False)
    fresh_choice.setenv("RLREG_DEVICE", "gpu")
    for call in (device.device_name, device.dist_backend):
        with pytest.raises(ConfigError, match="RLREG_DEVICE=gpu but torch on .* sees no CUDA device"):
            call()


def test_gpu_actor_with_cuda(fresh_choice):
    _torch_sees_cuda(fresh_choice, True)
    fresh_choice.setenv("RLREG_DEVICE", "gpu")
    assert (device.device_name(), device.dist_backend()) == ("cuda", "nccl")


def test_unknown_value_is_a_config_error(fresh_choice):
    fresh_choice.setenv("RLREG_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="RLREG_DEVICE='tpu'"):
        device.has_cuda()

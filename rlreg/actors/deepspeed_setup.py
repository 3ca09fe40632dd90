"""How a learner rank sets DeepSpeed up: its config, the learning-rate schedule, a free rendezvous
port, and the one loader of DeepSpeed's checkpoint files (safe: weights_only plus the few
DeepSpeed types they hold)."""
from __future__ import annotations

import importlib
import math
import pickle
import socket
from typing import Any

import torch

from rlreg.actors.config import LearnerConfig
from rlreg.errors import ConfigError

# The only non-tensor types DeepSpeed 0.19.8's checkpoints of rlreg's runs hold (ZeRO 0-3, fp32/bf16;
# listed with torch.serialization.get_unsafe_globals_in_checkpoint): everything else is refused.
CHECKPOINT_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                      "deepspeed.runtime.zero.config.ZeroStageEnum",
                      "deepspeed.utils.tensor_fragment.fragment_address")


def cosine_with_warmup(total_steps: int, warmup_fraction: float, min_ratio: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def deepspeed_config(cfg: LearnerConfig, world_size: int) -> dict:
    """The DeepSpeed config of a learner rank. rlreg feeds its own micro-batches (LearnerBatch.
    micro_batches) and marks the accumulation boundary itself, so DeepSpeed's batch numbers are
    nominal: one "sample" per rank, no accumulation of its own (which would divide every loss by
    a fixed step count, and rlreg's counts vary from step to step)."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    ds_config = {
        "train_batch_size": world_size,
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bool(cfg.bf16)},  # None (follow the model) is resolved in connect, before this
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.offload_optimizer or cfg.offload_params:
        # The client torch AdamW (see LearnerRank.connect) steps the offloaded fp32 states on the
        # host; DeepSpeed's faster DeepSpeedCPUAdam would first compile its cpu_adam op (minutes).
        ds_config["zero_force_ds_cpu_optimizer"] = False
    return ds_config


# Rendezvous ports (the learners' TCP store, the weight group's) come from here when the machine's
# ephemeral range leaves room below it: above Ray's default worker ports (10002-19999).
RENDEZVOUS_LOW = 20000
EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default where unreadable)."""
    try:
        low, high = (int(v) for v in open(EPHEMERAL_RANGE).read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1", attempts: int = 50) -> int:
    """A port free on host now, for a store other processes connect to once it listens. Not from
    bind(0): that gives an ephemeral port, which any outgoing connection on the machine (Ray's
    processes make many) may take before the store binds it, and a fresh-clone test run lost two
    groups that way (EADDRINUSE). Ports below the ephemeral range are taken only by explicit binds.
    Falls back to bind(0) where the range leaves no room or nothing below it is free."""
    import random

    top = ephemeral_ports()[0] - 1
    if top - RENDEZVOUS_LOW >= 100:
        pick = random.SystemRandom()
        for _ in range(attempts):
            port = pick.randint(RENDEZVOUS_LOW, top)
            if _bindable(host, port):
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def safe_torch_load(path: str, map_location=None) -> Any:
    """torch.load(weights_only=True) that also admits the few DeepSpeed types in CHECKPOINT_GLOBALS;
    a file naming any other global is refused, naming the file and the global."""
    allowed = [getattr(importlib.import_module(mod), name)
               for mod, name in (g.rsplit(".", 1) for g in CHECKPOINT_GLOBALS)]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((line.strip() for line in str(err).splitlines() if "global" in line.lower()), str(err)[:300])
        raise ConfigError(f"{path}: refusing to load this checkpoint file: it holds objects rlreg's checkpoints "
                          f"never contain ({reason})") from None

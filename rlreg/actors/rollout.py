"""RolloutWorker: a Ray actor that owns one vLLM engine and samples constrained numbers."""
from __future__ import annotations

from pathlib import Path

import ray

from rlreg import device
from rlreg.model.engine import EngineConfig, NumberEngine, Samples


class RolloutWorker:
    def __init__(self, model_dir: str, engine_cfg: EngineConfig, max_model_len: int, torch_threads: int = 0):
        # Before the engine: the in-process vLLM engine turns set_num_threads into a no-op.
        device.configure_torch_threads(torch_threads or None)
        self.engine = NumberEngine(model_dir, engine_cfg, max_model_len)
        self.version = 0  # how many weight updates this engine has taken

    def ready(self) -> bool:
        return True

    def sample(self, prompts: list[list[int]], allowed: list[list[int]], n: int, temperature: float) -> Samples:
        return self.engine.sample(prompts, allowed, n, temperature)

    def load_weights(self, named_arrays: dict) -> int:
        """Weights arrive through the object store (zero-copy numpy); returns the engine's weight version."""
        self.engine.load_weights(named_arrays)
        self.version += 1
        return self.version


def start_rollout_worker(model_dir: str | Path, engine_cfg: EngineConfig, max_model_len: int, ray_cfg):
    """Start one worker; the engine env var must be in the actor's env before vllm is imported."""
    from rlreg.actors.session import get_with_timeout

    actor_cls = ray.remote(RolloutWorker).options(
        num_cpus=ray_cfg.rollout_cpus, num_gpus=device.ray_gpus_per_actor(1.0),
        runtime_env={"env_vars": device.engine_env()},
    )
    worker = actor_cls.remote(str(model_dir), engine_cfg, max_model_len, ray_cfg.torch_threads)
    get_with_timeout(worker.ready.remote(), ray_cfg.actor_start_timeout_s, "starting the rollout worker (vLLM engine)")
    return worker

"""Rollout workers: Ray actors that each own one vLLM engine and sample constrained numbers;
RolloutGroup spreads a batch over N of them and pushes new weights to all."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import ray

from rlreg import device
from rlreg.model.encoder import ENCODER_PREFIX
from rlreg.model.engine import EngineConfig, NumberEngine, Samples

EMBED_KEY = "model.embed_tokens.weight"  # Llama's token embeddings under HF names


class RolloutWorker:
    def __init__(self, model_dir: str, engine_cfg: EngineConfig, max_model_len: int, torch_threads: int = 0):
        # Before the engine: the in-process vLLM engine turns set_num_threads into a no-op.
        device.configure_torch_threads(torch_threads or None)
        self.engine = NumberEngine(model_dir, engine_cfg, max_model_len)
        self.version = 0  # how many weight updates this engine has taken
        self.encoder, self.embed_matrix, self.feature_id = None, None, None
        if self.engine.takes_embeddings:
            # Vector input: this actor turns features into prompt embeddings with its own copies
            # of the encoder and the token-embedding matrix, both refreshed on every weight update.
            from safetensors import safe_open

            from rlreg.model.build import ModelMeta
            from rlreg.model.encoder import load_encoder

            self.encoder = load_encoder(model_dir)
            self.feature_id = ModelMeta.load(model_dir).feature_id
            with safe_open(str(Path(model_dir, "model.safetensors")), "pt") as f:
                self.embed_matrix = f.get_tensor(EMBED_KEY)

    def ready(self) -> bool:
        return True

    def node_id(self) -> str:
        """The Ray node this engine runs on (for placement checks)."""
        return ray.get_runtime_context().get_node_id()

    def sample(self, prompts: list[list[int]], allowed: list[list[int]], n: int, temperature: float,
               features: np.ndarray | None = None) -> Samples:
        embeddings = None
        if self.encoder is not None:
            from rlreg.model.encoder import prompt_embeddings

            if features is None:
                raise ValueError("this model takes vector input: sample() needs features")
            embeddings = prompt_embeddings(self.embed_matrix, self.encoder, prompts, features, self.feature_id)
        return self.engine.sample(prompts, allowed, n, temperature, embeddings)

    def load_weights(self, named_arrays: dict) -> int:
        """Weights arrive through the object store (zero-copy numpy); returns the engine's weight version."""
        import torch

        lm = {k: v for k, v in named_arrays.items() if not k.startswith(ENCODER_PREFIX)}
        self.engine.load_weights(lm)
        if self.encoder is not None:
            self.encoder.load_state_dict({k[len(ENCODER_PREFIX):]: torch.as_tensor(v)
                                          for k, v in named_arrays.items() if k.startswith(ENCODER_PREFIX)})
            self.embed_matrix = torch.as_tensor(np.array(lm[EMBED_KEY]))
        self.version += 1
        return self.version


class RolloutGroup:
    """N rollout workers behind one call; every wait is time-limited."""

    def __init__(self, model_dir: str | Path, engine_cfg: EngineConfig, max_model_len: int, ray_cfg,
                 workers: int = 1):
        from rlreg.actors.session import require_resources, wait_for_actors

        self.ray_cfg = ray_cfg
        require_resources(workers * ray_cfg.rollout_cpus, workers * device.ray_gpus_per_actor(1.0),
                          f"{workers} rollout worker(s)")
        self._args = (str(model_dir), engine_cfg, max_model_len, ray_cfg.torch_threads)
        # The engine env var must be in the actor's env before vllm is imported there.
        self._cls = ray.remote(RolloutWorker).options(
            num_cpus=ray_cfg.rollout_cpus, num_gpus=device.ray_gpus_per_actor(1.0),
            resources=dict(ray_cfg.rollout_resources), runtime_env={"env_vars": device.engine_env()},
        )
        self.workers = [self._cls.remote(*self._args) for _ in range(workers)]
        wait_for_actors([w.ready.remote() for w in self.workers], ray_cfg.actor_start_timeout_s,
                        f"starting {workers} rollout worker(s) (vLLM engine)")

    def sample(self, inputs: dict, allowed: list[list[int]], n: int, temperature: float,
               chunk: int = 256) -> Samples:
        """inputs: {"prompts": [...], optional "features": [N, f]} (Task.inputs). Chunks are dealt
        round-robin to the workers; results come back in input order."""
        from rlreg.actors.session import get_with_timeout

        prompts, features = inputs["prompts"], inputs.get("features")
        starts = list(range(0, len(prompts), chunk))
        refs = [self.workers[i % len(self.workers)].sample.remote(
                    prompts[a : a + chunk], allowed, n, temperature,
                    None if features is None else features[a : a + chunk])
                for i, a in enumerate(starts)]
        parts = get_with_timeout(refs, self.ray_cfg.call_timeout_s, "rollout sampling")
        return Samples(token_ids=np.concatenate([p.token_ids for p in parts]),
                       logprobs=np.concatenate([p.logprobs for p in parts]))

    def load_weights(self, weights_ref) -> list[int]:
        """Push one weights object (an ObjectRef, read zero-copy by each worker) to every engine."""
        from rlreg.actors.session import get_with_timeout

        return get_with_timeout([w.load_weights.remote(weights_ref) for w in self.workers],
                                self.ray_cfg.call_timeout_s, "rollout weight update")

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)

"""Rollout workers: Ray actors that each own one vLLM engine and sample constrained numbers;
RolloutGroup spreads a batch over N of them and pushes new weights to all, and replaces a worker
that died or stopped answering (fresh engine, current weights) before retrying its share once."""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


from rlreg import console, device
from rlreg.actors.config import RayConfig
from rlreg.actors import session
from rlreg.actors.placement import ActorPlacement, SharedPlacement
from rlreg.actors.session import ActorFailed, get_with_timeout, require_resources, wait_for_start
from rlreg.errors import RemoteTimeout
from rlreg.model.build import ModelMeta, read_tensor
from rlreg.model.config import EngineConfig
from rlreg.model.encoder import ENCODER_PREFIX, load_encoder, prompt_embeddings
from rlreg.model.engine import NumberEngine, Samples
from rlreg.model.weight_transfer import SyncFailed

EMBED_KEY = "model.embed_tokens.weight"  # the token embeddings under HF names (Llama, Qwen2, Mistral)


class EngineLost(RuntimeError):
    """A rollout worker's engine no longer answers (its process died): the worker must be replaced."""


class RolloutWorker:
    def __init__(self, model_dir: str, engine_cfg: EngineConfig, max_model_len: int, torch_threads: int = 0):
        console.redirect_actor_output("engine")
        # Before the engine: the in-process vLLM engine turns set_num_threads into a no-op.
        device.configure_torch_threads(torch_threads or None)
        self.engine = NumberEngine(model_dir, engine_cfg, max_model_len)
        self.version = 0  # how many weight updates this engine has taken
        self.encoder, self.embed_matrix, self.feature_id = None, None, None
        if self.engine.takes_embeddings:
            # Vector input: this actor turns features into prompt embeddings with its own copies
            # of the encoder and the token-embedding matrix, both refreshed on every weight update.
            self.encoder = load_encoder(model_dir)
            self.feature_id = ModelMeta.load(model_dir).feature_id
            self.embed_matrix = read_tensor(model_dir, EMBED_KEY)

    def ready(self) -> bool:
        return True

    def node_id(self) -> str:
        """The Ray node this engine runs on (for placement checks)."""
        return ray.get_runtime_context().get_node_id()

    def sample(self, prompts: list[list[int]], allowed: list[list[int]], draws: list[tuple[int, float]],
               features: np.ndarray | None = None) -> list[Samples]:
        """One Samples per draw (n, temperature), all in one engine call (NumberEngine.sample_draws)."""
        embeddings = None
        if self.encoder is not None:
            if features is None:
                raise ValueError("this model takes vector input: sample() needs features")
            embeddings = prompt_embeddings(self.embed_matrix, self.encoder, prompts, features, self.feature_id)
        return self.engine.sample_draws(prompts, allowed, draws, embeddings)

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

    # -- weights over a process group (sync.route: collective, rlreg.actors.weight_sync) ----------
    def open_weight_group(self, host: str, port: int, rank: int, size: int, timeout_s: float, backend: str) -> int:
        self.engine.open_weight_group(host, port, rank, size, timeout_s, backend)
        return rank

    def gpu_slot(self) -> tuple[str, tuple]:
        """(node, GPU ids Ray gave this actor): which engines share a GPU with learner rank 0."""
        return ray.get_runtime_context().get_node_id(), tuple(sorted(map(str, ray.get_gpu_ids())))

    def close_weight_group(self) -> None:
        self.engine.close_weight_group()

    def receive_weights(self, specs: list, buckets: list[list[int]]) -> int:
        """Load what learner rank 0 broadcasts; returns the engine's weight version. A failure is
        SyncFailed when this engine still answers (a peer or the sender failed: rejoin and redo),
        else EngineLost (replace this worker)."""
        exit_after, self._exit_during_sync = getattr(self, "_exit_during_sync", 0), 0
        try:
            self.engine.receive_weights(specs, buckets, exit_after)
        except Exception as err:
            if not self.engine.alive():
                raise EngineLost(f"the vLLM engine stopped answering during a weight sync ({err})") from err
            raise SyncFailed(str(err)) from err
        self.version += 1
        return self.version

    def debug_exit_during_next_sync(self, after_buckets: int = 1) -> None:
        """Test hook: the next collective weight sync ends the engine's process after that many buckets."""
        self._exit_during_sync = after_buckets

    def rng_state(self) -> bytes:
        return self.engine.rng_state()

    def set_rng_state(self, state: bytes) -> None:
        self.engine.set_rng_state(state)

    def debug_sleep(self, seconds: float) -> None:
        """Test hook: block this actor (it runs one call at a time), as a hung engine would."""
        time.sleep(seconds)

    # Colocated mode (ray.colocate): free the GPU for the learner ranks sharing it, take it back after.
    # Idempotent, so a caller may wake engines that a failed step left awake (or asleep).
    def sleep(self) -> bool:
        """Put the engine to sleep (vLLM level 1); returns whether it is now asleep."""
        if not getattr(self, "asleep", False):
            self.engine.sleep()
            self.asleep = True
        return self.asleep

    def wake_up(self) -> bool:
        """Wake the engine (weights and KV cache); returns whether it is now awake."""
        if getattr(self, "asleep", False):
            self.asleep = not self.engine.wake_up()
        return not self.asleep


def chunk_size(rows: int, workers: int, largest: int) -> int:
    """Rows per sampling call: every worker gets a share (a batch smaller than `largest` would
    otherwise all go to the first engine), and no call is larger than `largest`."""
    return max(1, min(largest, -(-rows // max(1, workers))))


class RolloutGroup:
    """N rollout workers behind one call; every wait is time-limited."""

    def __init__(self, model_dir: str | Path, engine_cfg: EngineConfig, max_model_len: int, ray_cfg: RayConfig,
                 workers: int = 1, shared: SharedPlacement | None = None):
        """`shared`: the placement group reserved for engines and learner ranks together (ray.colocate):
        engine w goes into the plan's bundle for it, started with sleep mode on."""
        self.ray_cfg = ray_cfg
        self._shared = shared
        gpus = ray_cfg.rollout_gpus if device.has_cuda() else 0.0
        self._places = shared.plan.engines if shared is not None else [
            ActorPlacement(None, ray_cfg.rollout_cpus, gpus, dict(ray_cfg.rollout_resources)) for _ in range(workers)]
        if shared is None:
            require_resources(sum(p.num_cpus for p in self._places), sum(p.num_gpus for p in self._places),
                              f"{workers} rollout worker(s)")
        else:
            engine_cfg = dataclasses.replace(engine_cfg, sleep_mode=shared.plan.colocated or engine_cfg.sleep_mode)
        self._args = (str(model_dir), engine_cfg, max_model_len, ray_cfg.torch_threads)
        # The engine env var must be in the actor's env before vllm is imported there.
        # session.actor_env looked up at call time: benchmarks/scaling.py stands in for it there.
        self._cls = ray.remote(RolloutWorker)
        self._env = {"env_vars": {**device.engine_env(engine_cfg.process), **session.actor_env()}}
        self.workers = [self._start_worker(w) for w in range(len(self._places))]
        wait_for_start([w.ready.remote() for w in self.workers], ray_cfg.actor_start_timeout_s,
                       f"starting {workers} rollout worker(s) (vLLM engine)", self.shutdown)
        self._weights_ref = None  # the last weights pushed: a replacement engine loads them
        self.resync = None  # a collective sync of every engine, when weights do not travel by object
        self.restarts = 0

    def _start_worker(self, w: int):
        """Worker w's engine is seeded engine.seed + w: with one seed, every engine would draw the same
        samples for the same prompts. A replacement for worker w takes its seed and its place."""
        model_dir, engine_cfg, max_model_len, torch_threads = self._args
        place = self._places[w]
        placed = {} if place.bundle is None else {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            self._shared.group, placement_group_bundle_index=place.bundle)}
        return self._cls.options(num_cpus=place.num_cpus, num_gpus=place.num_gpus, resources=dict(place.resources),
                                 runtime_env=self._env, **placed).remote(model_dir, dataclasses.replace(engine_cfg, seed=engine_cfg.seed + w),
                                                  max_model_len, torch_threads)

    def sample(self, inputs: dict, allowed: list[list[int]], n: int, temperature: float,
               chunk: int = 256) -> Samples:
        """inputs: {"prompts": [...], optional "features": [N, f]} (Task.inputs). Chunks are dealt
        round-robin to the workers; results come back in input order."""
        return self.sample_draws(inputs, allowed, [(n, temperature)], chunk)[0]

    def sample_draws(self, inputs: dict, allowed: list[list[int]], draws: list[tuple[int, float]],
                     chunk: int = 256) -> list[Samples]:
        """One Samples per draw (n, temperature), each chunk's draws in one call to its engine."""
        prompts, features = inputs["prompts"], inputs.get("features")
        chunk = chunk_size(len(prompts), len(self.workers), chunk)
        starts = list(range(0, len(prompts), chunk))
        parts = self._call(starts, lambda w, a: w.sample.remote(
            prompts[a : a + chunk], allowed, draws, None if features is None else features[a : a + chunk]),
            "rollout sampling")
        return [Samples(token_ids=np.concatenate([p[d].token_ids for p in parts]),
                        logprobs=np.concatenate([p[d].logprobs for p in parts])) for d in range(len(draws))]

    def load_weights(self, weights_ref) -> list[int]:
        """Push one weights object (an ObjectRef, read zero-copy by each worker) to every engine."""
        self._weights_ref = weights_ref
        return self._call(list(range(len(self.workers))), lambda w, _: w.load_weights.remote(weights_ref),
                          "rollout weight update")

    def rng_states(self) -> list[bytes]:
        return self._call(list(range(len(self.workers))), lambda w, _: w.rng_state.remote(), "rollout RNG state")

    def set_rng_states(self, states: list[bytes]) -> None:
        self._call(list(range(len(self.workers))), lambda w, i: w.set_rng_state.remote(states[i]),
                   "rollout RNG restore")

    def _call(self, items: list, submit: Callable[[Any, Any], Any], what: str) -> list:
        """submit(worker, item) for each item, item k on worker k mod N; results in item order.
        One deadline (ray.call_timeout_s) covers the call. A worker that died or did not answer is
        replaced and its items are retried once on the replacement; a second failure is an error."""
        import ray.exceptions

        results: dict[int, Any] = {}
        pending = list(range(len(items)))
        for attempt in range(2):
            refs = {k: submit(self.workers[k % len(self.workers)], items[k]) for k in pending}
            deadline = time.monotonic() + self.ray_cfg.call_timeout_s
            failed: dict[int, str] = {}  # worker index -> what went wrong
            for k, ref in refs.items():
                w = k % len(self.workers)
                if w in failed:  # its other items are queued behind the failure: retry them too
                    continue
                try:
                    results[k] = get_with_timeout(ref, max(0.0, deadline - time.monotonic()), what)
                except ray.exceptions.RayActorError as err:
                    failed[w] = f"died ({type(err).__name__})"
                except RemoteTimeout:
                    failed[w] = f"did not answer within ray.call_timeout_s={self.ray_cfg.call_timeout_s:g} s"
            pending = [k for k in pending if k not in results]
            if not pending:
                return [results[k] for k in range(len(items))]
            if attempt == 1:
                raise ActorFailed(f"{what}: rollout worker(s) {sorted(failed)} failed again after a restart: "
                                  + "; ".join(failed.values()))
            for w, reason in failed.items():
                self.replace_worker(w, f"{what}: rollout worker {w} {reason}")
        raise AssertionError("unreachable")

    def replace_worker(self, w: int, reason: str, load_weights: bool = True) -> None:
        """Kill worker w and start a new engine (bounded: ray.max_restarts) holding the current
        weights: the last object pushed, or, when weights travel by process group, what
        `self.resync` (set by rlreg.actors.weight_sync's owner) sends to every engine. With
        load_weights=False the caller brings the weights itself."""
        limit = self.ray_cfg.max_restarts
        if self.restarts >= limit:
            raise ActorFailed(f"{reason}; not restarted: {self.restarts} restart(s) already this run "
                              f"(ray.max_restarts={limit})")
        self.restarts += 1
        print(f"rlreg: {reason}; starting a replacement ({self.restarts} of ray.max_restarts={limit})",
              file=sys.stderr, flush=True)
        ray.kill(self.workers[w], no_restart=True)  # a hung engine cannot be interrupted otherwise
        worker = self._start_worker(w)
        wait_for_start(worker.ready.remote(), self.ray_cfg.actor_start_timeout_s,
                       f"restarting rollout worker {w} (vLLM engine)", lambda: ray.kill(worker))
        if load_weights and self._weights_ref is not None:  # else it holds the model the group started from
            get_with_timeout(worker.load_weights.remote(self._weights_ref), self.ray_cfg.call_timeout_s,
                             f"loading the current weights into restarted rollout worker {w}")
        self.workers[w] = worker
        if load_weights and self._weights_ref is None and self.resync is not None:
            self.resync()

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)

    # Colocated mode (ray.colocate): engines sleep while the learner updates, wake for rollouts.
    # A worker replaced on failure starts awake, which is what every caller after wake_up expects.
    def sleep(self) -> list[bool]:
        return self._call(list(range(len(self.workers))), lambda w, _: w.sleep.remote(), "rollout engine sleep")

    def wake_up(self) -> list[bool]:
        return self._call(list(range(len(self.workers))), lambda w, _: w.wake_up.remote(), "rollout engine wake-up")

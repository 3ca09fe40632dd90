"""A vLLM engine that samples number sequences under the per-position constraint, its engine core
inline or in its own process (engine.process); weights are replaced through the workers' rlreg
extension (rlreg.model.engine_worker).

Used directly by the evaluator and wrapped in a Ray actor by the rollout workers."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rlreg import console, device
from rlreg.errors import ConfigError
from rlreg.model.build import ModelMeta, encoder_spec
from rlreg.model.config import EngineConfig


@dataclass
class Samples:
    """Constrained samples: HF token ids and their logprobs under the masked, tempered policy."""

    token_ids: np.ndarray  # int64 [B, n, L]
    logprobs: np.ndarray  # float32 [B, n, L]


def engine_kwargs(model_dir: str | Path, cfg: EngineConfig, max_model_len: int) -> dict:
    """The vLLM LLM's settings from the engine config and the model directory (rlreg's own
    plug-ins, the logits processor and the worker extension, are added by NumberEngine). Device
    choices (KV-cache sizing, CUDA graphs) come from rlreg.device."""
    if cfg.sleep_mode and not device.has_cuda():
        raise ConfigError("engine.sleep_mode needs GPUs: vLLM's CPU build refuses sleep mode at engine start "
                          "(it cannot free the engine's memory); set it (and ray.colocate) to false on CPU")
    meta = ModelMeta.load(model_dir)
    # A pretrained model may hold fewer positions than the config asks (rlreg.model.pretrained).
    max_model_len = min(max_model_len, meta.max_positions)
    model_dir = str(model_dir)
    return dict(
        model=model_dir, tokenizer=model_dir, skip_tokenizer_init=False, max_model_len=max_model_len,
        trust_remote_code=meta.trust_remote_code,
        seed=cfg.seed, dtype=device.model_dtype(model_dir) if cfg.dtype == "model" else cfg.dtype,
        enforce_eager=device.engine_enforce_eager(cfg.enforce_eager),
        **device.engine_memory_kwargs(cfg.gpu_memory_utilization, cfg.kv_cache_memory_bytes),
        block_size=cfg.block_size, enable_prefix_caching=cfg.enable_prefix_caching, max_num_seqs=cfg.max_num_seqs,
        logprobs_mode="processed_logprobs", enable_prompt_embeds=encoder_spec(model_dir) is not None,
        enable_sleep_mode=cfg.sleep_mode,
    )


def _to_samples(outputs, n: int, length: int) -> Samples:
    token_ids = np.zeros((len(outputs), n, length), dtype=np.int64)
    logprobs = np.zeros((len(outputs), n, length), dtype=np.float32)
    for b, out in enumerate(outputs):
        for k, completion in enumerate(out.outputs):
            ids = list(completion.token_ids)
            token_ids[b, k, : len(ids)] = ids
            for t, (tok, entry) in enumerate(zip(ids, completion.logprobs or [])):
                logprobs[b, k, t] = entry[tok].logprob
    return Samples(token_ids=token_ids, logprobs=logprobs)


class NumberEngine:
    def __init__(self, model_dir: str | Path, cfg: EngineConfig, max_model_len: int):
        # Set, not defaulted: engine.process is an explicit choice (a rollout worker's actor got the same
        # environment at start, for anything that reads it earlier).
        os.environ.update(device.engine_env(cfg.process))
        device.enable_tf32()  # reaches the model's matmuls when the engine core runs in this process
        from vllm import LLM

        from rlreg.model.constrained import PROCESSOR_FQCN
        from rlreg.model.engine_worker import WORKER_EXTENSION

        self.cfg = cfg
        self.model_dir = str(model_dir)
        kwargs = engine_kwargs(model_dir, cfg, max_model_len)
        # Vector input: prompts arrive as embeddings made by the feature encoder.
        self.takes_embeddings = kwargs["enable_prompt_embeds"]
        self.llm = LLM(**kwargs, logits_processors=[PROCESSOR_FQCN], worker_extension_cls=WORKER_EXTENSION)

    def load_weights(self, named_arrays: dict) -> None:
        """Replace the weights in place (HF names → arrays) on every engine worker, then drop the
        prefix cache: its KV entries were computed with the old weights."""
        from rlreg.model.engine_worker import pack_arrays

        packed = pack_arrays(named_arrays)
        loaded = self.llm.collective_rpc("rlreg_load_weights", timeout=self.cfg.timeout_s, args=(packed,))
        if any(n != len(packed) for n in loaded):
            raise RuntimeError(f"vLLM workers loaded {loaded} of {len(packed)} weight tensors")
        self.llm.reset_prefix_cache()

    # Weights over a process group from learner rank 0 (sync.route: collective). Each vLLM worker
    # is one member; rlreg runs one worker per engine (no tensor parallelism), checked at join.
    def open_weight_group(self, host: str, port: int, rank: int, size: int, timeout_s: float, backend: str) -> None:
        joined = self.llm.collective_rpc("rlreg_open_weight_group", timeout=timeout_s + 60,
                                         args=(host, port, rank, size, timeout_s, backend))
        if len(joined) != 1:
            raise RuntimeError(f"the collective weight sync expects one vLLM worker per engine, this one has "
                               f"{len(joined)}")

    def close_weight_group(self) -> None:
        self.llm.collective_rpc("rlreg_close_weight_group", timeout=self.cfg.timeout_s)

    def receive_weights(self, specs: list, buckets: list[list[int]], exit_after: int = 0) -> None:
        """Load the weights learner rank 0 broadcasts (bucket by bucket), then drop the prefix cache."""
        loaded = self.llm.collective_rpc("rlreg_receive_weights", timeout=self.cfg.timeout_s,
                                         args=([(s.name, s.dtype, list(s.shape)) for s in specs], buckets, exit_after))
        if any(n != len(specs) for n in loaded):
            raise RuntimeError(f"vLLM workers loaded {loaded} of {len(specs)} weight tensors")
        self.llm.reset_prefix_cache()

    def alive(self, timeout_s: float = 30.0) -> bool:
        """Whether the engine's workers still answer (after a failed call: engine or peer at fault?)."""
        try:
            return all(self.llm.collective_rpc("rlreg_ping", timeout=timeout_s))
        except Exception:
            return False

    def rng_state(self) -> bytes:
        return self.llm.collective_rpc("rlreg_rng_state", timeout=self.cfg.timeout_s)[0]

    def set_rng_state(self, state: bytes) -> None:
        self.llm.collective_rpc("rlreg_set_rng_state", timeout=self.cfg.timeout_s, args=(state,))

    def sample(self, prompts: Sequence[Sequence[int]], allowed: list[list[int]], n: int,
               temperature: float, embeddings: Sequence | None = None) -> Samples:
        """n constrained completions of len(allowed) tokens per prompt; temperature 0 is greedy.
        `embeddings` ([T, H] tensors, one per prompt) replace the token ids for vector input."""
        return self.sample_draws(prompts, allowed, [(n, temperature)], embeddings)[0]

    def sample_draws(self, prompts: Sequence[Sequence[int]], allowed: list[list[int]],
                     draws: Sequence[tuple[int, float]], embeddings: Sequence | None = None) -> list[Samples]:
        """One Samples per draw (n, temperature), all in ONE generate call: e.g. ReMax's G samples and
        its greedy decode are scheduled together, and the greedy request reuses the samples'
        prompt KV (prefix cache) instead of waiting for a second call."""
        from vllm import SamplingParams
        from vllm.inputs import EmbedsPrompt, TokensPrompt

        from rlreg.model.constrained import TABLE_KEY

        length = len(allowed)
        params = [SamplingParams(
            n=n, temperature=temperature, max_tokens=length, min_tokens=length, ignore_eos=True,
            logprobs=0, detokenize=False, extra_args={TABLE_KEY: allowed},
        ) for n, temperature in draws]
        started = time.monotonic()
        if embeddings is not None:
            requests = [EmbedsPrompt(prompt_embeds=e) for e in embeddings]
        else:
            requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        # Draw-major: outputs come back in request order, draw d's at [d*B, (d+1)*B).
        outputs = self.llm.generate(requests * len(draws), [p for p in params for _ in requests], use_tqdm=False)
        elapsed = time.monotonic() - started
        if elapsed > self.cfg.timeout_s:
            # Checked after the fact: the in-process engine cannot be interrupted mid-call, so this
            # cannot stop a hang (the Ray-side ray.call_timeout_s wait does, and replaces the worker).
            # The samples are complete and valid: keep them, and say the engine is slow.
            console.warn(f"vLLM generate took {elapsed:.0f} s, more than engine.timeout_s={self.cfg.timeout_s:g} "
                         "(a post-hoc health check; the hard limit is ray.call_timeout_s)")
        batch = len(prompts)
        return [_to_samples(outputs[d * batch:(d + 1) * batch], n, length) for d, (n, _) in enumerate(draws)]

    # Colocated mode (ray.colocate): the engine frees its GPU memory while the learner ranks sharing
    # its GPU train, and takes it back before the next weight sync and rollouts.
    def sleep(self) -> None:
        """vLLM level-1 sleep: weights copied to host memory, KV cache dropped (its prefix-cache
        entries are stale after the learner update anyway). Needs engine.sleep_mode at start."""
        if not self.cfg.sleep_mode:
            raise RuntimeError("this engine was started without engine.sleep_mode (set by ray.colocate): "
                               "it cannot sleep")
        self.llm.sleep(level=1)

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """Weights back on the GPU and the KV cache reallocated (tags: only "weights" or "kv_cache",
        e.g. the weights before a weight sync and the KV cache after it); whether fully awake."""
        return self.llm.wake_up(tags)

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
from rlreg.model.build import encoder_spec
from rlreg.model.config import EngineConfig


@dataclass
class Samples:
    """Constrained samples: HF token ids and their logprobs under the masked, tempered policy."""

    token_ids: np.ndarray  # int64 [B, n, L]
    logprobs: np.ndarray  # float32 [B, n, L]


class NumberEngine:
    def __init__(self, model_dir: str | Path, cfg: EngineConfig, max_model_len: int):
        # Set, not defaulted: engine.process is an explicit choice (a rollout worker's actor got the same
        # environment at start, for anything that reads it earlier).
        os.environ.update(device.engine_env(cfg.process))
        from vllm import LLM

        from rlreg.model.constrained import PROCESSOR_FQCN
        from rlreg.model.engine_worker import WORKER_EXTENSION

        self.cfg = cfg
        # Vector input: prompts arrive as embeddings made by the feature encoder.
        self.takes_embeddings = encoder_spec(model_dir) is not None
        self.model_dir = str(model_dir)
        dtype = cfg.dtype
        if dtype == "model":
            import json

            config = json.loads(Path(model_dir, "config.json").read_text())
            dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
        self.llm = LLM(
            model=self.model_dir, tokenizer=self.model_dir, skip_tokenizer_init=False,
            max_model_len=max_model_len, seed=cfg.seed, dtype=dtype, enforce_eager=cfg.enforce_eager,
            kv_cache_memory_bytes=cfg.kv_cache_memory_bytes, block_size=cfg.block_size,
            enable_prefix_caching=cfg.enable_prefix_caching, max_num_seqs=cfg.max_num_seqs,
            logprobs_mode="processed_logprobs", logits_processors=[PROCESSOR_FQCN],
            enable_prompt_embeds=self.takes_embeddings, worker_extension_cls=WORKER_EXTENSION,
        )

    def load_weights(self, named_arrays: dict) -> None:
        """Replace the weights in place (HF names → arrays) on every engine worker, then drop the
        prefix cache: its KV entries were computed with the old weights."""
        from rlreg.model.engine_worker import pack_arrays

        packed = pack_arrays(named_arrays)
        loaded = self.llm.collective_rpc("rlreg_load_weights", timeout=self.cfg.timeout_s, args=(packed,))
        if any(n != len(packed) for n in loaded):
            raise RuntimeError(f"vLLM workers loaded {loaded} of {len(packed)} weight tensors")
        self.llm.reset_prefix_cache()

    def rng_state(self) -> bytes:
        return self.llm.collective_rpc("rlreg_rng_state", timeout=self.cfg.timeout_s)[0]

    def set_rng_state(self, state: bytes) -> None:
        self.llm.collective_rpc("rlreg_set_rng_state", timeout=self.cfg.timeout_s, args=(state,))

    def sample(self, prompts: Sequence[Sequence[int]], allowed: list[list[int]], n: int,
               temperature: float, embeddings: Sequence | None = None) -> Samples:
        """n constrained completions of len(allowed) tokens per prompt; temperature 0 is greedy.
        `embeddings` ([T, H] tensors, one per prompt) replace the token ids for vector input."""
        from vllm import SamplingParams
        from vllm.inputs import EmbedsPrompt, TokensPrompt

        from rlreg.model.constrained import TABLE_KEY

        length = len(allowed)
        params = SamplingParams(
            n=n, temperature=temperature, max_tokens=length, min_tokens=length, ignore_eos=True,
            logprobs=0, detokenize=False, extra_args={TABLE_KEY: allowed},
        )
        started = time.monotonic()
        if embeddings is not None:
            requests = [EmbedsPrompt(prompt_embeds=e) for e in embeddings]
        else:
            requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        elapsed = time.monotonic() - started
        if elapsed > self.cfg.timeout_s:
            # Checked after the fact: the in-process engine cannot be interrupted mid-call, so this
            # cannot stop a hang (the Ray-side ray.call_timeout_s wait does, and replaces the worker).
            # The samples are complete and valid: keep them, and say the engine is slow.
            console.warn(f"vLLM generate took {elapsed:.0f} s, more than engine.timeout_s={self.cfg.timeout_s:g} "
                         "(a post-hoc health check; the hard limit is ray.call_timeout_s)")
        token_ids = np.zeros((len(prompts), n, length), dtype=np.int64)
        logprobs = np.zeros((len(prompts), n, length), dtype=np.float32)
        for b, out in enumerate(outputs):
            for k, completion in enumerate(out.outputs):
                ids = list(completion.token_ids)
                token_ids[b, k, : len(ids)] = ids
                for t, (tok, entry) in enumerate(zip(ids, completion.logprobs or [])):
                    logprobs[b, k, t] = entry[tok].logprob
        return Samples(token_ids=token_ids, logprobs=logprobs)

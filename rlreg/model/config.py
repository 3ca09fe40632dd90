"""The `model:` and `engine:` config sections: what model to build and how vLLM serves it."""
from __future__ import annotations

from dataclasses import dataclass

from rlreg.errors import ConfigError

# vLLM's CPU attention kernels only exist for these head sizes.
SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)


@dataclass
class ModelConfig:
    """A small Llama-style causal LM built from scratch (nothing is downloaded)."""

    layers: int = 2
    hidden: int = 64
    heads: int = 2
    kv_heads: int | None = None  # None: same as heads
    intermediate: int | None = None  # None: 4 * hidden
    max_positions: int = 512
    prompt_vocab: int = 512  # BPE vocabulary trained on the train prompts (before number tokens)
    dtype: str = "float32"
    seed: int = 0
    soft_tokens: int = 4  # vector input (data.input=vector): prompt embeddings made by the MLP encoder
    encoder_hidden: int = 256

    def validate(self) -> None:
        for key in ("layers", "hidden", "heads", "max_positions"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.hidden % self.heads:
            raise ConfigError(f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})")
        head_dim = self.hidden // self.heads
        if head_dim not in SUPPORTED_HEAD_DIMS:
            raise ConfigError(f"model.hidden / model.heads = {head_dim} is not a head size vLLM supports "
                              f"({', '.join(map(str, SUPPORTED_HEAD_DIMS))})")
        kv = self.kv_heads or self.heads
        if self.heads % kv:
            raise ConfigError(f"model.heads ({self.heads}) must be divisible by model.kv_heads ({kv})")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.soft_tokens < 1 or self.encoder_hidden < 1:
            raise ConfigError("model.soft_tokens and model.encoder_hidden must be >= 1")
        if not 64 <= self.prompt_vocab <= 65536:
            raise ConfigError(f"model.prompt_vocab must be in 64..65536, got {self.prompt_vocab}")


ENGINE_PROCESSES = ("auto", "inline", "separate")


@dataclass
class EngineConfig:
    """The vLLM engine each rollout worker owns."""

    kv_cache_memory_bytes: int = 256 * 1024**2  # CPU: RAM reserved for the KV cache
    block_size: int = 32  # CPU default is 128; only full blocks are prefix-cached, and prompts are short
    max_num_seqs: int = 256
    enable_prefix_caching: bool = True  # the G samples of one input share its prompt
    enforce_eager: bool = True  # graph capture buys nothing on CPU and costs start-up time
    seed: int = 0  # engine-level: a per-request seed kills vLLM's CPU engine
    dtype: str = "model"  # "model": the dtype the model was built in (vLLM's "auto" picks bf16 on CPU)
    # Post-hoc health check, not a limit: warn when one generate() call took longer than this. The
    # limit on a hung engine is the Ray-side wait in rlreg.actors.rollout (ray.call_timeout_s), after
    # which the worker is replaced.
    timeout_s: float = 600.0
    # Where vLLM's engine core runs: "inline" (in the rollout worker's process), "separate" (its own
    # process, vLLM's default) or "auto": inline on CPU (starts in ~6 s instead of ~25 s on 2 cores),
    # separate on GPU (scheduling then overlaps the model's compute). rlreg.device decides "auto".
    process: str = "auto"

    def validate(self) -> None:
        if self.kv_cache_memory_bytes < 16 * 1024**2:
            raise ConfigError(f"engine.kv_cache_memory_bytes must be >= 16 MiB, got {self.kv_cache_memory_bytes}")
        if self.block_size not in (16, 32, 64, 128):
            raise ConfigError(f"engine.block_size must be 16, 32, 64 or 128, got {self.block_size}")
        if self.process not in ENGINE_PROCESSES:
            raise ConfigError(f"engine.process must be one of {', '.join(ENGINE_PROCESSES)}, got {self.process!r}")
        if self.max_num_seqs < 1:
            raise ConfigError(f"engine.max_num_seqs must be >= 1, got {self.max_num_seqs}")

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

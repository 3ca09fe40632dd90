"""The `model:` and `engine:` config sections: what model to build and how vLLM serves it."""
from __future__ import annotations

from dataclasses import dataclass, field

from rlreg.errors import ConfigError

# vLLM's CPU attention kernels only exist for these head sizes.
SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)


@dataclass
class LoraConfig:
    """`model.lora`: train low-rank adapters (peft) on a frozen base model."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Module names peft wraps (Llama / Qwen2 attention and MLP projections by default).
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigError(f"model.lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"model.lora.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("model.lora.target_modules must name at least one module")


@dataclass
class ModelConfig:
    """The causal LM: a small Llama-style model built from scratch (the default; nothing is
    downloaded), or a pretrained Hugging Face checkpoint (`pretrained`), whose architecture then
    decides layers, hidden size and heads (those keys are ignored)."""

    # A local directory holding a Hugging Face causal LM (config.json, safetensors, tokenizer), or
    # a hub id where the hub is reachable.
    pretrained: str | None = None
    trust_remote_code: bool = False  # the checkpoint's own modelling code runs only when set
    allow_pickle: bool = False  # load *.bin / *.pt weights (pickle can run code); off: refuse them
    lora: LoraConfig | None = None  # train adapters instead of every weight

    layers: int = 2
    hidden: int = 64
    heads: int = 2
    kv_heads: int | None = None  # None: same as heads
    intermediate: int | None = None  # None: 4 * hidden
    # Longest prompt + number the engine holds; a pretrained model keeps the smaller of this and
    # its own limit, so a 32k-context checkpoint does not reserve a 32k KV cache per sequence.
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
        if self.lora is not None:
            self.lora.validate()
        if self.pretrained is not None and not str(self.pretrained).strip():
            raise ConfigError("model.pretrained must name a directory or a hub id, got an empty string")
        if not 64 <= self.prompt_vocab <= 65536:
            raise ConfigError(f"model.prompt_vocab must be in 64..65536, got {self.prompt_vocab}")


ENGINE_PROCESSES = ("auto", "inline", "separate")


@dataclass
class EngineConfig:
    """The vLLM engine each rollout worker owns."""

    kv_cache_memory_bytes: int = 256 * 1024**2  # CPU: RAM reserved for the KV cache
    # GPU: the fraction of the GPU's memory this engine may use (weights, activations, and the KV
    # cache gets the rest); kv_cache_memory_bytes is not passed there (rlreg.device.engine_memory_kwargs).
    gpu_memory_utilization: float = 0.9
    block_size: int = 32  # CPU default is 128; only full blocks are prefix-cached, and prompts are short
    max_num_seqs: int = 256
    enable_prefix_caching: bool = True  # the G samples of one input share its prompt
    # "auto": eager on CPU (graph capture buys nothing there and costs start-up time), CUDA graphs on
    # GPU (rlreg.device.engine_enforce_eager); true/false force it.
    enforce_eager: bool | str = "auto"
    # vLLM's sleep mode (GPU only): the engine can free its GPU memory while colocated learner ranks
    # train (ray.colocate turns it on); the CPU build refuses it at engine start.
    sleep_mode: bool = False
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
        if isinstance(self.gpu_memory_utilization, bool) or not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"engine.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.enforce_eager not in ("auto", True, False):
            raise ConfigError(f"engine.enforce_eager must be auto, true or false, got {self.enforce_eager!r}")

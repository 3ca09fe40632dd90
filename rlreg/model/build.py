"""Build a model directory that both transformers and vLLM load: a small Llama-style causal LM,
a BPE prompt tokenizer trained on the train prompts, the number tokens as added tokens, and
rlreg's own metadata (number tokenizer spec, token ids)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rlreg.errors import ConfigError
from rlreg.io import write_json
from rlreg.model.config import ModelConfig
from rlreg.rundir import ModelFiles

META_FILE = ModelFiles.META
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
# Ends every prompt: the model learns that number tokens follow it.
ANSWER = "<answer>"
# Placeholder rows of a vector-input prompt, overwritten by the feature encoder's soft tokens.
FEATURE = "<feat>"


@dataclass
class ModelMeta:
    """What rlreg needs beyond the HF files to prompt the model and read its numbers."""

    number_tokenizer: dict  # NumberTokenizer.describe()
    # HF id of each number token, in the number tokenizer's order. With numbers.surface=text two
    # number tokens may share an id (ieee's sign and exponent sign are both "+"): the position
    # tells them apart, since no position allows both.
    number_token_ids: list[int]
    bos_id: int | None  # None: the tokenizer starts no sequence with a BOS token (Qwen2)
    eos_id: int | None
    pad_id: int
    answer_id: int | None  # None: the prompt text itself ends where the number starts (surface=text)
    max_positions: int
    feature_id: int | None = None
    surface: str = "atomic"  # numbers.surface the model was made with
    pretrained: str | None = None  # the checkpoint a pretrained model started from
    trust_remote_code: bool = False  # the architecture's code comes with the checkpoint

    def save(self, model_dir: str | Path) -> None:
        write_json(Path(model_dir, META_FILE), self.__dict__)

    @classmethod
    def load(cls, model_dir: str | Path) -> "ModelMeta":
        path = Path(model_dir, META_FILE)
        if not path.is_file():
            raise ConfigError(f"{model_dir} is not an rlreg model directory (no {META_FILE})")
        return cls(**json.loads(path.read_text()))


def train_prompt_tokenizer(corpus: Sequence[str], vocab_size: int, number_tokens: Sequence[str]):
    """Byte-level BPE trained on the train prompts: any text encodes, feature names become single
    tokens, and the number tokens are atomic added tokens the BPE never splits."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOS, UNK, ANSWER]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus) or [" "], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK)
    fast.add_special_tokens({"additional_special_tokens": [ANSWER, FEATURE, *number_tokens]})
    return fast


def build_model_dir(out_dir: str | Path, cfg: ModelConfig, number_tokenizer, corpus: Sequence[str]) -> Path:
    """Write config.json + model.safetensors + tokenizer files + rlreg_meta.json into out_dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_prompt_tokenizer(corpus, cfg.prompt_vocab, number_tokenizer.tokens)
    ids = tokenizer.convert_tokens_to_ids
    heads = cfg.heads
    llama = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate or 4 * cfg.hidden,
        num_hidden_layers=cfg.layers, num_attention_heads=heads, num_key_value_heads=cfg.kv_heads or heads,
        head_dim=cfg.hidden // heads, max_position_embeddings=cfg.max_positions, tie_word_embeddings=False,
        bos_token_id=ids(BOS), eos_token_id=ids(EOS), pad_token_id=ids(PAD), dtype=cfg.dtype,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(llama).to(dtype=getattr(torch, cfg.dtype))
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    ModelMeta(
        number_tokenizer=number_tokenizer.describe(),
        number_token_ids=[ids(t) for t in number_tokenizer.tokens],
        bos_id=ids(BOS), eos_id=ids(EOS), pad_id=ids(PAD), answer_id=ids(ANSWER),
        max_positions=cfg.max_positions, feature_id=ids(FEATURE),
    ).save(out_dir)
    return out_dir


def count_parameters(model_dir: str | Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in ModelFiles.weight_files(model_dir):
        with safe_open(str(path), "np") as f:
            for key in f.keys():
                size = 1
                for dim in f.get_slice(key).get_shape():
                    size *= int(dim)
                total += size
    return total


def read_tensor(model_dir: str | Path, name: str):
    """One weight by its HF name, from whichever safetensors file (shard) holds it."""
    from safetensors import safe_open

    for path in ModelFiles.weight_files(model_dir):
        with safe_open(str(path), "pt") as f:
            if name in f.keys():
                return f.get_tensor(name)
    raise ConfigError(f"{model_dir}: no weight named {name!r} in its safetensors files")


def encoder_spec(model_dir: str | Path) -> dict | None:
    """The vector-input encoder's spec (sizes, train feature statistics); None for text input."""
    path = Path(model_dir, ModelFiles.ENCODER_SPEC)
    return json.loads(path.read_text()) if path.is_file() else None

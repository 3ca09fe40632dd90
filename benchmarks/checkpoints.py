"""Hugging Face checkpoints made on the fly for the tests and the benchmarks (nothing is downloaded):
random weights, seeded, in a real architecture, with a real byte-level BPE tokenizer trained here on
the given texts. Two families' conventions:

- "qwen2": Qwen2ForCausalLM; no BOS, <|endoftext|> as EOS and pad, a ChatML chat template;
- "llama": LlamaForCausalLM; a BOS the tokenizer prepends, </s> as EOS, no pad token.

Both split digits one by one before the bytes, as the families' own tokenizers do
(`numbers.surface: text` needs single-digit tokens)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

KINDS = ("qwen2", "llama")
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL_TOKENS = {"qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "llama": ["<s>", "</s>"]}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def bpe_tokenizer(kind: str, texts: Sequence[str], vocab: int, exact: bool = False):
    """A byte-level BPE of at most `vocab` tokens (special tokens included) trained on `texts`, with
    `kind`'s conventions. exact: raise unless the BPE reached `vocab` (too small a corpus stops early)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    _check_kind(kind)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL_TOKENS[kind], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    if exact and tok.get_vocab_size() != vocab:
        raise ValueError(f"the BPE reached {tok.get_vocab_size()} tokens, not {vocab}: give it more text")
    if kind == "qwen2":
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                       extra_special_tokens=SPECIAL_TOKENS["qwen2"][1:], chat_template=CHATML)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def write_checkpoint(out_dir: str | Path, kind: str, tokenizer, shape: dict, spare_rows: int, max_positions: int,
                     shard_kb: int | None = None) -> Path:
    """Write a float32 `kind` model of `shape` (the config's size keys: hidden_size, layers, heads,
    tie_word_embeddings, ...) and `tokenizer` into out_dir. The embedding has spare_rows rows past the
    tokenizer, as released checkpoints do. shard_kb: split the weights into safetensors shards of that
    size, with their index, as large checkpoints are (None: one file)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    _check_kind(kind)
    config_cls, model_cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[kind]
    config = config_cls(**shape, vocab_size=len(tokenizer) + spare_rows, max_position_embeddings=max_positions,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, dtype="float32")
    torch.manual_seed(0)
    shards = {} if shard_kb is None else {"max_shard_size": f"{shard_kb}KB"}
    model_cls(config).save_pretrained(out_dir, safe_serialization=True, **shards)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)

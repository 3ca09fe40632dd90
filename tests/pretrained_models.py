"""Tiny pretrained-style checkpoints for the tests (benchmarks.checkpoints makes them): random weights
in a real architecture, a real byte-level BPE tokenizer, sharded safetensors — the shapes of the
checkpoints users start from.

- "qwen2": Qwen2ForCausalLM, tied head, no BOS token, a pad token, a chat template (ChatML);
- "llama": LlamaForCausalLM, untied head, a BOS token the tokenizer prepends, no pad token."""
from __future__ import annotations

from pathlib import Path

from benchmarks.checkpoints import bpe_tokenizer, write_checkpoint

# The BPE learns its merges from this: SQL-ish and plain text, so sqlcard prompts encode compactly.
CORPUS = [
    "SELECT COUNT(*) FROM title t,movie_info mi WHERE t.id=mi.movie_id AND t.production_year>2010",
    "SELECT COUNT(*) FROM title t,cast_info ci WHERE t.id=ci.movie_id AND ci.role_id=2",
    "SELECT COUNT(*) FROM movie_keyword mk,title t WHERE mk.movie_id=t.id AND t.kind_id<7",
    "The score of the answer is a number between zero and one hundred. Answer: 42",
    "question answer response prompt score rating value estimate count rows",
] * 4


def make_checkpoint(out_dir: str | Path, kind: str = "qwen2", hidden: int = 64, layers: int = 2,
                    shard_kb: int = 200) -> Path:
    """Write a checkpoint of `kind` into out_dir, split into safetensors shards of shard_kb each."""
    shape = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=hidden // 2, tie_word_embeddings=kind == "qwen2")
    return write_checkpoint(out_dir, kind, bpe_tokenizer(kind, CORPUS, 400), shape, spare_rows=16,
                            max_positions=1024, shard_kb=shard_kb)

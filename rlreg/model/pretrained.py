"""A pretrained Hugging Face causal LM made into an rlreg model directory (`model.pretrained`).

The checkpoint is read once, given the number tokens the way `numbers.surface` asks, and saved as
a new directory beside rlreg's metadata; from then on every reader (learner, engines, eval,
predict) sees an ordinary model directory, exactly as for a model built from scratch.

- surface "atomic": the number format's tokens (and <answer>, <feat>) are added to the tokenizer
  as new tokens; each new embedding row (and head row, when the head is not tied) starts as the
  mean of the rows of the text it stands for ("<d7>" from "7"), so what the model knows about
  digits carries over instead of starting from noise.
- surface "text": nothing is added; each number token is written with the tokenizer's own token
  for its text, and decoding constrains each position to the ids that spell a valid number."""
from __future__ import annotations

from pathlib import Path

from rlreg.errors import ConfigError
from rlreg.model.build import ANSWER, FEATURE, ModelMeta
from rlreg.model.config import ModelConfig
from rlreg.numbers.base import spelling
from rlreg.rundir import ModelFiles

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Config keys of architectures whose head output is transformed before the softmax (Gemma 2's
# softcapping, Cohere's and Granite's scaling): the learner computes only the number tokens' rows
# of the head, so such a model would train on other probabilities than the engine samples from.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
# What the embedding rows of <answer> and <feat> start from.
ANSWER_TEXT = "\nAnswer:"
FEATURE_TEXT = " "


def resolve_pretrained(name: str) -> Path:
    """A local directory as given; otherwise a hub id fetched where the hub is reachable."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConfigError(f"model.pretrained={name!r} is a file; it must be a checkpoint directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                                     "*.txt", "*.jinja"]))
    except Exception as err:  # offline, unknown id, bad id: one line that says what to do
        raise ConfigError(f"model.pretrained={name!r}: no such local directory, and fetching it from the Hugging "
                          f"Face hub failed ({type(err).__name__}); download it where the hub is reachable and set "
                          f"model.pretrained to that directory") from None


def check_checkpoint(src: Path, cfg: ModelConfig) -> None:
    """What a checkpoint must have before anything is loaded from it, each as a clear error."""
    if not (src / ModelFiles.HF_CONFIG).is_file():
        raise ConfigError(f"model.pretrained={src}: no {ModelFiles.HF_CONFIG}, not a Hugging Face checkpoint")
    if not (src / ModelFiles.TOKENIZER).is_file():
        raise ConfigError(f"model.pretrained={src}: no {ModelFiles.TOKENIZER}; rlreg needs a fast (Rust) "
                          f"tokenizer file: save it with transformers' AutoTokenizer(...).save_pretrained")
    has_safetensors = any(src.glob("*.safetensors"))
    pickled = sorted(p.name for p in src.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not has_safetensors and not pickled:
        raise ConfigError(f"model.pretrained={src}: no weight files (*.safetensors)")
    if not has_safetensors and not cfg.allow_pickle:
        raise ConfigError(
            f"model.pretrained={src} holds only pickle-format weights ({', '.join(pickled[:3])}), which can run "
            f"code when loaded. Convert them once: python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{src}').save_pretrained('{src}-safetensors')\" and use that directory, or set "
            f"model.allow_pickle: true if you trust the files")
    import json

    config = json.loads((src / ModelFiles.HF_CONFIG).read_text())
    text_config = config.get("text_config") or config
    scaled = {key: text_config.get(key) for key in LOGIT_TRANSFORMS if text_config.get(key) not in (None, 1, 1.0)}
    if scaled:
        raise ConfigError(f"model.pretrained={src}: the architecture transforms its logits "
                          f"({', '.join(f'{k}={v}' for k, v in scaled.items())}), which rlreg's answer-only logits "
                          f"(the number tokens' head rows only) do not apply; this architecture is not supported")
    if config.get("auto_map") and not cfg.trust_remote_code:
        raise ConfigError(f"model.pretrained={src}: the architecture's code ships with the checkpoint "
                          f"(config.json auto_map); set model.trust_remote_code: true to run it")


def adopt_pretrained(out_dir: str | Path, cfg: ModelConfig, number_tokenizer, surface: str) -> Path:
    """Write out_dir: the checkpoint's model and tokenizer with the number tokens, plus rlreg_meta.json."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_pretrained(str(cfg.pretrained))
    check_checkpoint(src, cfg)
    remote = cfg.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=remote)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"model.pretrained={src}: its tokenizer loads only as a slow (Python) tokenizer; "
                          f"rlreg encodes prompts with the fast one ({ModelFiles.TOKENIZER})")
    dtype = getattr(torch, cfg.dtype)
    if any(src.glob("*.safetensors")):
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, trust_remote_code=remote, use_safetensors=True)
    else:  # only pickle files, and check_checkpoint found model.allow_pickle set
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, trust_remote_code=remote,
                                                     use_safetensors=False)  # opt-in: model.allow_pickle
    bos_id = _leading_bos(tokenizer)
    if surface == "atomic":
        number_ids, answer_id, feature_id = _add_number_tokens(model, tokenizer, number_tokenizer.tokens)
    else:
        number_ids, answer_id, feature_id = _spelled_number_ids(tokenizer, number_tokenizer, src), None, None
    pad_id = _pad_id(model, tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Shards as large as the checkpoint's own: a checkpoint split for its readers stays split.
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=_largest_shard(src))
    tokenizer.save_pretrained(out_dir)
    limit = getattr(model.config, "max_position_embeddings", None) or cfg.max_positions
    ModelMeta(
        number_tokenizer=number_tokenizer.describe(), number_token_ids=number_ids, bos_id=bos_id,
        eos_id=tokenizer.eos_token_id, pad_id=pad_id, answer_id=answer_id,
        max_positions=min(cfg.max_positions, int(limit)), feature_id=feature_id, surface=surface,
        pretrained=str(cfg.pretrained), trust_remote_code=remote,
    ).save(out_dir)
    return out_dir


def _largest_shard(src: Path) -> int | str:
    sizes = [p.stat().st_size for p in src.glob("*.safetensors")]
    return max(sizes) if len(sizes) > 1 else "50GB"  # transformers' default: one file


def _leading_bos(tokenizer) -> int | None:
    """The BOS id when the tokenizer starts sequences with it (Llama); None when it does not (Qwen2)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("1", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def _pad_id(model, tokenizer) -> int:
    """Padding is always masked out, so a model without a pad token pads with its EOS token; one
    with neither gets a <pad> token (atomic or text surface alike)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    _grow_embeddings(model, len(tokenizer))
    return int(tokenizer.pad_token_id)


def _grow_embeddings(model, size: int) -> None:
    # Some checkpoints keep spare rows (Qwen2: 151,936 rows for 151,665 tokens): never shrink them.
    if size > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(size, mean_resizing=False)


def _add_number_tokens(model, tokenizer, number_tokens: list[str]) -> tuple[list[int], int, int]:
    import torch

    texts = {tok: spelling(tok) for tok in number_tokens} | {ANSWER: ANSWER_TEXT, FEATURE: FEATURE_TEXT}
    clash = [tok for tok in texts if tok in tokenizer.get_vocab()]
    if clash:
        raise ConfigError(f"the pretrained tokenizer already has the token(s) {', '.join(clash[:5])}, which rlreg "
                          f"adds for numbers.surface=atomic; use numbers.surface=text")
    # Spelled with the tokenizer as it was, before the new tokens exist.
    sources = {tok: tokenizer(text, add_special_tokens=False)["input_ids"] for tok, text in texts.items()}
    tokenizer.add_special_tokens({"extra_special_tokens": list(texts)}, replace_extra_special_tokens=False)
    _grow_embeddings(model, len(tokenizer))
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in texts}
    inputs = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    untied = head is not None and head.weight.data_ptr() != inputs.data_ptr()
    with torch.no_grad():
        for tok, rows in sources.items():
            inputs[ids[tok]] = inputs[rows].mean(dim=0)
            if untied:
                head.weight[ids[tok]] = head.weight[rows].mean(dim=0)
                if getattr(head, "bias", None) is not None:
                    head.bias[ids[tok]] = head.bias[rows].mean()
    return [ids[tok] for tok in number_tokens], ids[ANSWER], ids[FEATURE]


def _spelled_number_ids(tokenizer, number_tokenizer, src: Path) -> list[int]:
    """Each number token's id under surface=text: the one token its text is in this tokenizer."""
    ids = []
    for tok in number_tokenizer.tokens:
        text = spelling(tok)
        pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise ConfigError(
                f"numbers.surface=text: the tokenizer of {src} writes {text!r} ({number_tokenizer.name}'s {tok}) as "
                f"{len(pieces)} tokens {tokenizer.convert_ids_to_tokens(pieces)}; text numbers need each symbol to be "
                f"one token. Use numbers.surface=atomic, or a format whose symbols are single characters "
                f"(numbers.tokenizer=normalized or ieee)")
        ids.append(int(pieces[0]))
    for position, row in enumerate(number_tokenizer.allowed):
        allowed = [ids[i] for i in row.nonzero()[0]]
        if len(set(allowed)) != len(allowed):
            raise ConfigError(f"numbers.surface=text: two symbols allowed at position {position} of "
                              f"{number_tokenizer.name} are the same token in {src}; use numbers.surface=atomic")
    return ids

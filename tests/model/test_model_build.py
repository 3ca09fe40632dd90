"""The built model directory loads in transformers and in vLLM; constrained sampling through the
real vLLM engine only emits sequences that decode."""
import json

import numpy as np
import pytest
import torch

from rlreg.model.build import META_FILE, ModelMeta, count_parameters


def test_directory_has_hf_and_rlreg_files(tiny_task):
    d = tiny_task.model_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", META_FILE):
        assert (d / name).is_file(), name
    meta = ModelMeta.load(d)
    assert len(meta.number_token_ids) == len(tiny_task.number_tokenizer.tokens)
    assert len(set(meta.number_token_ids)) == len(meta.number_token_ids)
    assert count_parameters(d) > 10_000


def test_transformers_loads_and_tokenizer_keeps_number_tokens_atomic(tiny_task):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_task.model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_task.model_dir)
    meta = ModelMeta.load(tiny_task.model_dir)
    text = "".join(tiny_task.number_tokenizer.tokens)
    assert tok(text, add_special_tokens=False)["input_ids"] == meta.number_token_ids
    ids = torch.tensor([tiny_task.prompts["train"][0]])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))


def test_prompts_start_with_bos_and_end_with_answer_marker(tiny_task):
    meta = ModelMeta.load(tiny_task.model_dir)
    for p in tiny_task.prompts["val"]:
        assert p[0] == meta.bos_id and p[-1] == meta.answer_id
        assert not set(p[1:-1]) & set(meta.number_token_ids)


@pytest.mark.engine
def test_vllm_constrained_samples_always_decode(engine, tiny_task):
    prompts = tiny_task.prompts["val"][:6]
    samples = engine.sample(prompts, tiny_task.allowed_hf, n=8, temperature=1.5)
    assert samples.token_ids.shape == (6, 8, tiny_task.number_tokenizer.length)
    values, valid = tiny_task.decode(samples.token_ids)
    assert valid.all()
    assert np.isfinite(values).all()
    # Every token is a number token allowed at its position.
    allowed = tiny_task.allowed_hf
    for pos in range(samples.token_ids.shape[-1]):
        assert set(np.unique(samples.token_ids[..., pos])) <= set(allowed[pos])
    # logprobs are of the masked distribution: negative, and not the full-vocab ones (which
    # would be around -log(vocab) for an untrained model).
    assert (samples.logprobs <= 0).all()
    assert samples.logprobs.mean() > -np.log(len(allowed[0])) - 1.0


@pytest.mark.engine
def test_vllm_greedy_is_deterministic(engine, tiny_task):
    prompts = tiny_task.prompts["val"][:4]
    a = engine.sample(prompts, tiny_task.allowed_hf, n=1, temperature=0.0)
    b = engine.sample(prompts, tiny_task.allowed_hf, n=1, temperature=0.0)
    assert np.array_equal(a.token_ids, b.token_ids)


@pytest.mark.engine
def test_samples_and_greedy_decode_in_one_engine_call(engine, tiny_task):
    prompts = tiny_task.prompts["val"][:4]
    greedy_alone = engine.sample(prompts, tiny_task.allowed_hf, n=1, temperature=0.0)
    samples, greedy = engine.sample_draws(prompts, tiny_task.allowed_hf, [(5, 1.0), (1, 0.0)])
    assert samples.token_ids.shape == (4, 5, len(tiny_task.allowed_hf)) and greedy.token_ids.shape[:2] == (4, 1)
    # Each draw keeps its own settings and its rows' order: the greedy rows are the greedy decode.
    assert np.array_equal(greedy.token_ids, greedy_alone.token_ids)
    assert len({tuple(r) for r in samples.token_ids.reshape(-1, samples.token_ids.shape[-1])}) > 4

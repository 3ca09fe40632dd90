"""model.pretrained: a Hugging Face checkpoint adopted as an rlreg model directory (no Ray, no
engine): number tokens added (atomic) or spelled (text), BOS / pad handling, shards, refusals."""
import json
import shutil

import numpy as np
import pytest
import torch

from pretrained_models import make_checkpoint
from rlreg.config import load_config
from rlreg.errors import ConfigError, DataError
from rlreg.model.build import count_parameters, read_tensor
from rlreg.model.checkpoint import copy_model_extras
from rlreg.model.pretrained import adopt_pretrained
from rlreg.model.prompts import PromptCodec
from rlreg.numbers.base import spelling
from rlreg.numbers.registry import build_number_tokenizer
from rlreg.rundir import ModelFiles


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {kind: make_checkpoint(root / kind, kind) for kind in ("qwen2", "llama")}


def _adopt(src, out, *overrides):
    cfg = load_config(None, [f"model.pretrained={src}", *overrides])
    return adopt_pretrained(out, cfg.model, build_number_tokenizer(cfg.numbers), cfg.numbers.surface), cfg


def _embeddings(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_atomic_number_tokens_start_from_the_text_they_stand_for(sources, tmp_path, kind):
    from transformers import AutoTokenizer

    out, cfg = _adopt(sources[kind], tmp_path / "m", "numbers.tokenizer=ieee")
    before, after = _embeddings(sources[kind]), _embeddings(out)
    old_tok = AutoTokenizer.from_pretrained(sources[kind])
    meta = json.loads((out / ModelFiles.META).read_text())
    number_tokenizer = build_number_tokenizer(cfg.numbers)
    emb_old, emb_new = before.get_input_embeddings().weight, after.get_input_embeddings().weight
    head_old, head_new = before.get_output_embeddings().weight, after.get_output_embeddings().weight
    for token, hf_id in zip(number_tokenizer.tokens, meta["number_token_ids"]):
        rows = old_tok(spelling(token), add_special_tokens=False)["input_ids"]
        assert hf_id >= len(old_tok)  # a new token, not the digit's own
        assert torch.allclose(emb_new[hf_id], emb_old[rows].mean(0))
        assert torch.allclose(head_new[hf_id], head_old[rows].mean(0))
    # Everything the checkpoint had is unchanged.
    n = emb_old.shape[0]
    assert torch.equal(emb_new[: len(old_tok)], emb_old[: len(old_tok)]) and emb_new.shape[0] >= n
    tied = kind == "qwen2"
    assert (head_new.data_ptr() == emb_new.data_ptr()) == tied


def test_text_surface_uses_the_tokenizers_own_digits_and_decodes_by_position(sources, tmp_path):
    from transformers import AutoTokenizer

    out, cfg = _adopt(sources["llama"], tmp_path / "m", "numbers.tokenizer=ieee", "numbers.surface=text")
    tok = AutoTokenizer.from_pretrained(sources["llama"])
    codec = PromptCodec(out)
    assert len(AutoTokenizer.from_pretrained(out)) == len(tok)  # nothing added
    plus, minus, seven = (tok.convert_tokens_to_ids(t) for t in ("+", "-", "7"))
    number_tokenizer = build_number_tokenizer(cfg.numbers)
    assert codec.number_ids[number_tokenizer.token_to_id["<d7>"]] == seven
    # ieee: sign, exponent sign, exponent digits, mantissa: "+" means <+> first and <E+> second.
    y = -0.0123
    ids = number_tokenizer.encode_ids(y)
    hf = codec.number_ids[ids]
    assert hf[0] == minus and hf[1] == minus
    assert codec.to_number_ids(hf) == list(ids)
    assert number_tokenizer.decode_ids(codec.to_number_ids(hf)) == pytest.approx(y, rel=1e-3)
    assert codec.to_number_ids([seven] + list(hf[1:]))[0] == -1  # a digit where the sign goes is invalid
    assert codec.encode(["x"])[0][0] == tok.bos_token_id and codec.meta.answer_id is None


def test_text_surface_refuses_a_format_the_tokenizer_cannot_spell(sources, tmp_path):
    with pytest.raises(ConfigError, match=r"numbers.surface=text: the tokenizer of .* writes 'e-10'.*numbers.surface=atomic"):
        _adopt(sources["qwen2"], tmp_path / "m", "numbers.tokenizer=p10", "numbers.surface=text")


def test_bos_and_pad_follow_the_tokenizer(sources, tmp_path):
    qwen, _ = _adopt(sources["qwen2"], tmp_path / "q")
    llama, _ = _adopt(sources["llama"], tmp_path / "l")
    q, l = PromptCodec(qwen), PromptCodec(llama)
    assert q.meta.bos_id is None and l.meta.bos_id is not None
    assert q.encode(["a b"])[0][-1] == q.meta.answer_id and q.encode(["a b"])[0][0] != l.meta.bos_id
    assert l.encode(["a b"])[0][0] == l.meta.bos_id
    # Llama-style has no pad token: padding (always masked) uses EOS.
    assert l.meta.pad_id == l.meta.eos_id


def test_chat_template_wraps_the_prompt_as_a_user_turn(sources, tmp_path):
    out, _ = _adopt(sources["qwen2"], tmp_path / "q")
    codec = PromptCodec(out)
    ids = codec.encode(["hello"], chat_template=True)[0]
    text = codec._tok.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>user\nhello<|im_end|>") and "<|im_start|>assistant\n" in text
    assert ids[-1] == codec.meta.answer_id
    llama, _ = _adopt(sources["llama"], tmp_path / "l")
    with pytest.raises(DataError, match="has no chat template"):
        PromptCodec(llama).encode(["hello"], chat_template=True)


def test_shards_in_shards_out_and_readers_follow_the_index(sources, tmp_path):
    out, _ = _adopt(sources["qwen2"], tmp_path / "q")
    shards = ModelFiles.weight_files(out)
    assert len(shards) >= 2 and (out / ModelFiles.WEIGHTS_INDEX).is_file()
    model = _embeddings(out)
    assert count_parameters(out) == sum(p.numel() for p in model.parameters())  # a tied head counts once
    assert torch.equal(read_tensor(out, "model.embed_tokens.weight"), model.get_input_embeddings().weight)
    # A learner writes one file; the source's index must not follow it into the new directory.
    learner_out = tmp_path / "after"
    learner_out.mkdir()
    model.save_pretrained(learner_out)
    copy_model_extras(out, learner_out)
    assert not (learner_out / ModelFiles.WEIGHTS_INDEX).exists()
    assert ModelFiles.weight_files(learner_out) == [learner_out / ModelFiles.WEIGHTS]


def test_pickle_weights_are_refused_unless_allowed(sources, tmp_path):
    src = tmp_path / "pickled"
    shutil.copytree(sources["llama"], src)
    model = _embeddings(src)
    for path in src.glob("*.safetensors*"):
        path.unlink()
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"only pickle-format weights \(pytorch_model.bin\).*save_pretrained.*allow_pickle"):
        _adopt(src, tmp_path / "m")
    out, _ = _adopt(src, tmp_path / "m", "model.allow_pickle=true")
    assert ModelFiles.weight_files(out)  # stored as safetensors from then on


def test_remote_code_transformed_logits_and_missing_files_are_clear_errors(sources, tmp_path):
    src = tmp_path / "custom"
    shutil.copytree(sources["qwen2"], src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"auto_map": {"AutoModelForCausalLM": "x.Y"}}))
    with pytest.raises(ConfigError, match="set model.trust_remote_code: true"):
        _adopt(src, tmp_path / "m")
    (src / "config.json").write_text(json.dumps(config | {"final_logit_softcapping": 30.0}))
    with pytest.raises(ConfigError, match="final_logit_softcapping=30.0.*not supported"):
        _adopt(src, tmp_path / "m")
    (src / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        _adopt(src, tmp_path / "m")


def test_a_hub_id_without_the_hub_is_one_line_asking_for_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        _adopt("someone/no-such-model", tmp_path / "m")
    message = str(err.value)
    assert "\n" not in message and "someone/no-such-model" in message and "set model.pretrained to that directory" in message


def test_answer_only_logits_equal_the_full_head_on_a_pretrained_model(sources, tmp_path):
    from rlreg.model.encoder import PolicyModel

    out, _ = _adopt(sources["qwen2"], tmp_path / "q", "numbers.tokenizer=ieee")
    policy = PolicyModel(_embeddings(out), None, None)
    codec = PromptCodec(out)
    ids = torch.as_tensor([codec.encode(["SELECT COUNT(*) FROM title t"])[0] + codec.number_ids[:5].tolist()])
    rows = torch.as_tensor(codec.number_ids)
    full = policy(ids).logits[..., rows]
    only = policy(ids, number_token_ids=rows).logits
    assert torch.allclose(full, only, atol=1e-5) and np.isfinite(only.detach().numpy()).all()


def test_vector_input_on_a_pretrained_model_builds_the_encoder_at_its_width(sources, tmp_path):
    from rlreg.train.task import prepare_task

    base = [f"model.pretrained={sources['qwen2']}", "data.source=sklearn:diabetes", "data.max_rows=60",
            "data.input=vector", "model.soft_tokens=3"]
    cfg = load_config(None, [*base, f"run_dir={tmp_path / 'a'}"])
    task = prepare_task(cfg, tmp_path / "a")
    spec = json.loads((task.model_dir / ModelFiles.ENCODER_SPEC).read_text())
    assert spec["embed_dim"] == 64  # the checkpoint's hidden size, not model.hidden
    meta = task.checkpoint.meta
    assert task.prompts["train"][0] == [meta.feature_id] * 3 + [meta.answer_id]  # Qwen2: no BOS
    assert task.features["train"].shape[1] == 10
    text = load_config(None, [*base, "numbers.surface=text", f"run_dir={tmp_path / 'b'}"])
    with pytest.raises(ConfigError, match="data.input=vector with model.pretrained needs numbers.surface=atomic"):
        prepare_task(text, tmp_path / "b")


def test_a_hugging_face_directory_given_as_an_rlreg_checkpoint_points_to_model_pretrained(sources):
    from rlreg.model.checkpoint import load_checkpoint

    with pytest.raises(ConfigError, match="start from it with model.pretrained"):
        load_checkpoint(sources["llama"])

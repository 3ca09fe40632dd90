"""The learner's memory options: DeepSpeed offload (validated and mapped into the ds_config, not run:
on CPU it moves nothing) and gradient checkpointing (exact: same loss and gradients; not with the
shared-prefix forward, which it breaks)."""
import numpy as np
import pytest
import torch

from rlreg.actors.config import LearnerConfig
from rlreg.actors.deepspeed_setup import deepspeed_config
from rlreg.config import load_config
from rlreg.errors import ConfigError


def test_deepspeed_config_maps_the_learner_section():
    plain = deepspeed_config(LearnerConfig(zero_stage=2, grad_clip=0.5, bf16=True), world_size=4)
    assert plain["zero_optimization"] == {"stage": 2}
    assert plain["gradient_clipping"] == 0.5 and plain["bf16"] == {"enabled": True}
    # rlreg feeds its own micro-batches: DeepSpeed must not divide losses by an accumulation count.
    assert plain["gradient_accumulation_steps"] == 1
    assert plain["train_batch_size"] == 4 * plain["train_micro_batch_size_per_gpu"]
    assert "zero_force_ds_cpu_optimizer" not in plain

    both = deepspeed_config(LearnerConfig(zero_stage=3, offload_optimizer=True, offload_params=True), world_size=1)
    assert both["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                         "offload_param": {"device": "cpu"}}
    assert both["zero_force_ds_cpu_optimizer"] is False  # keeps the client torch AdamW (no cpu_adam build)
    optimizer_only = deepspeed_config(LearnerConfig(zero_stage=1, offload_optimizer=True), world_size=2)
    assert optimizer_only["zero_optimization"] == {"stage": 1, "offload_optimizer": {"device": "cpu"}}


@pytest.mark.parametrize("overrides,message", [
    (["learner.offload_params=true"], "learner.offload_params needs learner.zero_stage=3"),
    (["learner.offload_params=true", "learner.zero_stage=2"], "learner.offload_params needs"),
    (["learner.offload_optimizer=true", "learner.zero_stage=0"], "learner.offload_optimizer needs ZeRO"),
    (["learner.gradient_checkpointing=true"], "learner.gradient_checkpointing and learner.shared_prefix"),
    (["learner.micro_batch_size=-2"], "learner.micro_batch_size must be"),
])
def test_bad_memory_options_name_their_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_good_memory_options_load():
    cfg = load_config(None, ["learner.zero_stage=3", "learner.offload_params=true", "learner.offload_optimizer=true",
                             "learner.gradient_checkpointing=true", "learner.shared_prefix=false",
                             "learner.micro_batch_size=4"]).learner
    assert (cfg.offload_params, cfg.offload_optimizer, cfg.gradient_checkpointing, cfg.micro_batch_size) == \
        (True, True, True, 4)
    assert LearnerConfig().micro_batch_size == 0 and not LearnerConfig().gradient_checkpointing


def _policy_and_batch(task):
    from rlreg.model.build import ModelMeta
    from rlreg.model.logprobs import NumberHead
    from rlreg.model.policy import load_policy

    meta = ModelMeta.load(task.model_dir)
    torch.manual_seed(0)
    model = load_policy(str(task.model_dir), meta).train()
    head = NumberHead(meta.number_token_ids, task.number_tokenizer.allowed)
    prompts = [p for p in task.prompts["train"][:2] for _ in range(3)]  # 2 prompts × 3 samples
    tokens = torch.as_tensor(np.asarray(task.target_tokens["train"][:6]))
    advantages = torch.linspace(-1, 1, 6)
    return model, head, meta.pad_id, prompts, tokens, advantages


def _loss_and_grads(model, head, pad_id, prompts, tokens, advantages, shared_prefix=False):
    from rlreg.model.logprobs import answer_logits, gather_tokens

    model.zero_grad(set_to_none=True)
    logp_full = head.logprobs(answer_logits(model, prompts, head.token_ids[tokens], pad_id, head.token_ids,
                                            shared_prefix=shared_prefix))
    loss = -(gather_tokens(logp_full, tokens).sum(-1) * advantages).mean()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_task):
    model, *batch = _policy_and_batch(tiny_task)
    loss, grads = _loss_and_grads(model, *batch)
    model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.lm.is_gradient_checkpointing
    loss_ckpt, grads_ckpt = _loss_and_grads(model, *batch)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert set(grads_ckpt) == set(grads) and max(float(g.abs().max()) for g in grads.values()) > 1e-4
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_breaks_the_shared_prefix_forward(tiny_task):
    """Why LearnerConfig refuses the pair: in training, checkpointed layers keep no KV cache, and the
    shared-prefix forward's completions reach their prompt only through that cache."""
    model, head, pad_id, prompts, tokens, advantages = _policy_and_batch(tiny_task)
    plain, _ = _loss_and_grads(model, head, pad_id, prompts, tokens, advantages)
    shared, _ = _loss_and_grads(model, head, pad_id, prompts, tokens, advantages, shared_prefix=True)
    assert shared == pytest.approx(plain, rel=1e-5)  # exact without checkpointing
    ids = torch.as_tensor([prompts[0]])

    def cached_tokens() -> int:
        cache = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).past_key_values
        return 0 if cache is None else cache.get_seq_length()

    assert cached_tokens() == len(prompts[0])
    model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert cached_tokens() == 0
    with pytest.raises(AttributeError, match="batch_select_indices"):
        _loss_and_grads(model, head, pad_id, prompts, tokens, advantages, shared_prefix=True)

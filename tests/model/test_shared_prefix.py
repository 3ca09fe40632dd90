"""The shared-prefix forward gives the plain forward's logits and gradients."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlreg.model.encoder import PolicyModel
from rlreg.model.logprobs import answer_logits
from rlreg.model.shared_prefix import answer_logits_shared, prompt_runs


def tiny_model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=64)
    return PolicyModel(LlamaForCausalLM(cfg), None, None)


NUMBER_IDS = torch.arange(10, 20)  # the completions' vocabulary


def loss_and_grads(model, logits, completions):
    loss = logits.log_softmax(-1).gather(-1, (completions - 10).unsqueeze(-1)).sum()
    model.zero_grad()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_prompt_runs_groups_consecutive_repeats_only():
    firsts, owner = prompt_runs([[1, 2], [1, 2], [3], [1, 2]], None)
    assert firsts == [0, 2, 3]
    assert owner.tolist() == [0, 0, 1, 2]


def test_logits_and_gradients_equal_plain_forward():
    model = tiny_model()
    prompts = [[1, 5, 6, 7, 8, 9, 4], [1, 3, 4], [1, 8, 8, 2, 4]]
    group = 4
    flat = [p for p in prompts for _ in range(group)]
    completions = torch.randint(10, 20, (len(flat), 5), generator=torch.Generator().manual_seed(1))
    plain = answer_logits(model, flat, completions, pad_id=0, number_token_ids=NUMBER_IDS)
    loss_a, grads_a = loss_and_grads(model, plain, completions)
    shared = answer_logits_shared(model, flat, completions, pad_id=0, number_token_ids=NUMBER_IDS)
    loss_b, grads_b = loss_and_grads(model, shared, completions)
    assert torch.allclose(plain, shared, atol=1e-5)
    assert abs(loss_a - loss_b) < 1e-4
    worst = max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a)
    assert worst < 1e-5, worst
    assert max(g.abs().max().item() for g in grads_a.values()) > 1e-3  # gradients are not trivially 0


def test_answer_logits_switches_to_shared_only_when_prompts_repeat():
    model = tiny_model()
    completions = torch.randint(10, 20, (3, 2))
    distinct = [[1, 2, 3], [1, 4], [1, 5, 6]]
    a = answer_logits(model, distinct, completions, 0, NUMBER_IDS, shared_prefix=True)
    b = answer_logits(model, distinct, completions, 0, NUMBER_IDS, shared_prefix=False)
    assert torch.equal(a, b)  # nothing shared: the plain path runs

"""Answer-only logits (rlreg.model.encoder.PolicyModel.forward with number_token_ids): the learner's
constrained logprobs, its supervised and RL losses and their gradients w.r.t. every parameter equal
those of the full-vocabulary computation they replace ([N, T, vocab] logits, then the number-token
columns), for the plain and the shared-prefix forward, text and vector input, untied, tied and
biased LM heads; greedy_numbers picks the full-vocabulary argmax. Last, real DeepSpeed ZeRO-3 ranks
(the LM head partitioned) make the same step as one ZeRO-1 rank (which holds every parameter whole)."""
import numpy as np
import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlreg.algos.experience import LearnerBatch
from rlreg.algos.losses import rl_loss
from rlreg.algos.token_losses import supervised_loss, token_values
from rlreg.config import load_config
from rlreg.model.encoder import FeatureEncoder, PolicyModel
from rlreg.model.logprobs import NumberHead, answer_logits, gather_tokens, greedy_numbers, pack_sequences
from rlreg.numbers.registry import build_number_tokenizer
from rlreg.rundir import ModelFiles

PAD, BOS, FEATURE, ANSWER = 0, 1, 2, 3
VOCAB, HIDDEN, FIRST_NUMBER_ID = 96, 32, 70
NUMBERS = build_number_tokenizer({"tokenizer": "ieee", "base": 10})  # allowed sets differ by position
NUMBER_IDS = list(range(FIRST_NUMBER_ID, FIRST_NUMBER_ID + len(NUMBERS.tokens)))
SOFT_TOKENS, FEATURES = 2, 5
GROUP = 3
SFT = load_config(None, ["sft.loss=ntl_was"]).sft.loss_options()
RL = load_config(None, ["rl.entropy_coef=0.05", "rl.clip_eps=0.2", "rl.temperature=0.7",
                        "rl.expert_ce_coef=0.1"]).rl.loss_options()


def causal_lm(kind: str, init_std: float) -> nn.Module:
    torch.manual_seed(0)
    sizes = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=PAD,
                 initializer_range=init_std)
    if kind == "llama":  # as rlreg.model.build makes them: untied head
        return LlamaForCausalLM(LlamaConfig(**sizes, head_dim=16, tie_word_embeddings=False))
    lm = Qwen2ForCausalLM(Qwen2Config(**sizes, tie_word_embeddings=kind == "qwen2_tied"))
    if kind == "qwen2_biased_head":
        lm.lm_head = nn.Linear(HIDDEN, VOCAB, bias=True)
    return lm


def policy_model(kind: str, vector: bool, init_std: float = 0.02) -> PolicyModel:
    lm = causal_lm(kind, init_std)
    encoder = FeatureEncoder(FEATURES, HIDDEN, SOFT_TOKENS, hidden=16) if vector else None
    return PolicyModel(lm, encoder, FEATURE if vector else None).train()


def make_batch(vector: bool, seed: int = 0):
    """(prompts, features, tokens [N, L], LearnerBatch): G = 3 rows per input, input-major."""
    rng = np.random.default_rng(seed)
    if vector:
        base = [[BOS] + [FEATURE] * SOFT_TOKENS + [ANSWER]] * 3  # same ids: only the features differ
        features = torch.as_tensor(np.repeat(rng.normal(size=(3, FEATURES)), GROUP, axis=0), dtype=torch.float32)
    else:
        base = [[BOS, *rng.integers(4, FIRST_NUMBER_ID, size=n).tolist(), ANSWER] for n in (7, 2, 4)]
        features = None
    prompts = [p for p in base for _ in range(GROUP)]
    rows = len(prompts)
    tokens = np.stack([rng.choice(np.flatnonzero(NUMBERS.allowed[t]), size=rows)
                       for t in range(NUMBERS.length)], axis=1)
    expert = np.stack([rng.choice(np.flatnonzero(NUMBERS.allowed[t]), size=rows)
                       for t in range(NUMBERS.length)], axis=1)
    batch = LearnerBatch(prompts=prompts, tokens=tokens, old_logp=rng.normal(-1.5, 0.3, size=tokens.shape),
                         advantages=rng.normal(size=rows), expert=expert)
    return prompts, features, torch.as_tensor(tokens), batch


def full_vocabulary_logprobs(model, head, prompts, tokens, features, temperature):
    """What the learner computed before: [N, T, vocab] logits, then the number-token columns."""
    ids, mask, predict_at = pack_sequences(prompts, head.token_ids[tokens], PAD)
    logits = model(input_ids=ids, attention_mask=mask, features=features, use_cache=False).logits
    rows = torch.arange(len(prompts)).unsqueeze(1)
    return head.logprobs(logits[rows, predict_at].index_select(-1, head.token_ids), temperature)


def losses_and_grads(model, head, batch, logp_full_of):
    """Per objective: (logp_full, loss, {parameter: gradient}) — as LearnerRank's objectives call them."""
    tokens = torch.as_tensor(batch.tokens)
    out = {}
    for objective, temperature in (("sft", 1.0), ("rl", RL.temperature)):
        model.zero_grad(set_to_none=True)
        logp_full = logp_full_of(tokens, temperature)
        if objective == "sft":
            loss, _ = supervised_loss(logp_full, tokens, SFT, token_values(NUMBERS))
        else:
            loss, _ = rl_loss(gather_tokens(logp_full, tokens), logp_full, batch, RL)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        out[objective] = (logp_full.detach(), loss.detach(), grads)
    return out


@pytest.mark.parametrize("vector", [False, True], ids=["text", "vector"])
@pytest.mark.parametrize("kind", ["llama", "qwen2_tied", "qwen2_biased_head"])
def test_answer_only_logits_equal_the_full_vocabulary_computation(kind, vector):
    model = policy_model(kind, vector)
    head = NumberHead(NUMBER_IDS, NUMBERS.allowed)
    prompts, features, _, batch = make_batch(vector)
    want = losses_and_grads(model, head, batch, lambda tokens, temperature: full_vocabulary_logprobs(
        model, head, prompts, tokens, features, temperature))
    params = {name for name, _ in model.named_parameters()}
    for shared_prefix in (False, True):
        got = losses_and_grads(model, head, batch, lambda tokens, temperature: head.logprobs(answer_logits(
            model, prompts, head.token_ids[tokens], PAD, head.token_ids, features, shared_prefix), temperature))
        for objective, (logp_want, loss_want, grads_want) in want.items():
            logp, loss, grads = got[objective]
            assert logp.shape == (len(prompts), NUMBERS.length, len(NUMBER_IDS))
            assert torch.isinf(logp).any()  # the per-position mask is applied (and compared below)
            torch.testing.assert_close(logp, logp_want, rtol=0, atol=1e-5)
            assert abs(float(loss - loss_want)) < 1e-5, (objective, shared_prefix)
            assert set(grads) == set(grads_want) == params  # every parameter gets its gradient
            worst = max(float((grads[n] - grads_want[n]).abs().max()) for n in params)
            assert worst < 1e-5, (objective, shared_prefix, worst)
            assert max(float(g.abs().max()) for g in grads_want.values()) > 1e-3  # not trivially 0


@pytest.mark.parametrize("vector", [False, True], ids=["text", "vector"])
def test_greedy_numbers_pick_the_full_vocabulary_argmax(vector):
    model = policy_model("llama", vector, init_std=0.3).eval()  # larger weights: choices vary by input
    head = NumberHead(NUMBER_IDS, NUMBERS.allowed)
    prompts, features, _, _ = make_batch(vector, seed=1)
    with torch.no_grad():
        chosen = greedy_numbers(model, head, prompts, PAD, features)
        # Teacher-forced on its own choices, the old path's argmax at each position is that choice.
        logp = full_vocabulary_logprobs(model, head, prompts, chosen, features, 1.0)
    assert torch.equal(logp.argmax(-1), chosen)
    assert torch.isfinite(gather_tokens(logp, chosen)).all()  # only allowed tokens
    assert len({tuple(row) for row in chosen.tolist()}) > 1  # depends on the input


def test_reading_only_the_body_gives_the_lm_heads_input():
    """PolicyModel.final_hidden (the regression-head baseline's input) is what the LM head reads."""
    model = policy_model("llama", vector=False)
    ids, mask, _ = pack_sequences(make_batch(False)[0], torch.zeros((9, 0), dtype=torch.long), PAD)
    with torch.no_grad():
        hidden = model.final_hidden(ids, mask, use_cache=False).last_hidden_state
        full = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
    torch.testing.assert_close(hidden, full.hidden_states[-1], rtol=0, atol=0)
    torch.testing.assert_close(model.lm.lm_head(hidden), full.logits, rtol=0, atol=0)


# -- real DeepSpeed ZeRO-3 ranks under Ray --------------------------------------------------------
# hidden 512 × a vocabulary of ~310: a head of ~160 k elements, above DeepSpeed's default
# stage3_param_persistence_threshold (1e5), so ZeRO-3 partitions it (asserted below) — a smaller
# head would stay whole on every rank and not test the partitioned read.
ZERO3_MODEL = ["model.layers=1", "model.hidden=512", "model.heads=8", "sft.enabled=false"]
RAY = ["ray.torch_threads=1", "ray.learner_cpus=0.5", "ray.actor_start_timeout_s=600", "ray.call_timeout_s=300",
       "learner.warmup_fraction=0", "learner.grad_clip=100"]


def _learner_run(task, overrides: list[str]) -> dict:
    import ray

    from rlreg.actors.learner import LearnerGroup
    from rlreg.algos.experience import merge_stats

    def head_state(rank):  # nested: Ray pickles it by value (the test module is not importable there)
        """(parameter status, elements held, whole elements) of the LM head's weight on this rank."""
        weight = rank.engine.module.lm.get_output_embeddings().weight
        status = getattr(weight, "ds_status", None)
        return None if status is None else status.name, weight.data.numel(), getattr(weight, "ds_numel", weight.numel())

    cfg = load_config(None, RAY + overrides)
    group = LearnerGroup(task.model_dir, cfg.learner, 1e-3, 10, cfg.ray)
    prompts = [p for p in task.prompts["train"][:3] for _ in range(2)]
    tokens = np.asarray(task.target_tokens["train"][:6])
    batch = LearnerBatch(prompts=prompts, tokens=tokens, advantages=np.linspace(-1, 1, 6))
    options = load_config(None, ["rl.entropy_coef=0.01"]).rl.loss_options()
    try:
        out = {"head": ray.get(group.ranks[0].__ray_call__.remote(head_state), timeout=60)}
        out["logp"] = np.concatenate(group.call("token_logprobs", batch=batch))
        out["greedy"] = np.concatenate(group.call("greedy", batch=batch))
        out["stats"] = merge_stats(group.call("step", "rl", options, batch=batch), batch.shard_sizes(group.world_size))
        out["weights"] = ray.get(group.publish_weights(), timeout=300)
        return out
    finally:
        group.shutdown()


@pytest.mark.engine
def test_zero3_with_a_partitioned_head_equals_one_plain_rank(ray_session, tiny_cfg, tmp_path):
    from rlreg.train.task import prepare_task

    cfg = load_config(None, [*ZERO3_MODEL, f"run_dir={tmp_path}"])
    cfg.data, cfg.numbers = tiny_cfg.data, tiny_cfg.numbers
    task = prepare_task(cfg, tmp_path)
    want = _learner_run(task, ["learner.world_size=1", "learner.zero_stage=1"])  # 1: reports grad_norm
    got = _learner_run(task, ["learner.world_size=2", "learner.zero_stage=3"])
    status, held, whole = got["head"]
    assert status == "NOT_AVAILABLE" and held < whole  # partitioned outside the forward
    assert want["head"][0] is None
    np.testing.assert_allclose(got["logp"], want["logp"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got["greedy"], want["greedy"])
    assert got["stats"]["loss"] == pytest.approx(want["stats"]["loss"], rel=1e-5)
    assert got["stats"]["grad_norm"] == pytest.approx(want["stats"]["grad_norm"], rel=1e-4)
    from safetensors.numpy import load_file

    start_weights = load_file(str(task.model_dir / ModelFiles.WEIGHTS))
    number_rows = np.asarray(task.checkpoint.meta.number_token_ids)
    head_move = np.abs(want["weights"]["lm_head.weight"] - start_weights["lm_head.weight"])
    assert head_move[number_rows].max() > 5e-4  # the step moved them
    # Adam's first step moves each weight by about lr·sign(gradient), so a parameter whose gradient
    # was lost or wrong is off by about as much as the step moved it. A gradient near 0 (|g| ~ eps)
    # turns reduction-order noise into an isolated element off by up to lr (1.6e-4 seen, one element
    # in 262,144), so the bound is on the mean difference, relative to the parameter's mean move
    # (ratios seen: 1e-6 and below; the LM head's mean move is small, 4e-6, as only number rows move).
    ratio = {k: float(np.abs(got["weights"][k] - want["weights"][k]).mean()
                      / np.abs(want["weights"][k] - start_weights[k]).mean()) for k in want["weights"]}
    worst = max(ratio, key=ratio.get)
    assert ratio[worst] < 1e-3, f"{worst}: off by {ratio[worst]:g} of its move on average"

"""LoRA (model.lora, rlreg.model.lora): adapters trained on a frozen base, on the real stack.

One 2-rank DeepSpeed learner group with LoRA is shared by the module's engine tests (they run in
file order, each on the group's current state): only the adapters train and both ranks agree; the
KL reference is the base model; both sync routes give the engine the learner's policy while
sending only the targeted modules' parents; the saved model is the merged policy for
transformers and vLLM, with peft's adapters beside it; a DeepSpeed checkpoint restores it all."""
import copy
import os

import numpy as np
import pytest
import torch
from parity import engine_learner_gap

from rlreg.algos.experience import LearnerBatch
from rlreg.config import load_config
from rlreg.errors import ConfigError
from rlreg.model.config import LoraConfig
from rlreg.model.lora import ADAPTER_DIR, LoraAdapters

# q/v of attention and up of the MLP: vLLM fuses each with siblings that are not targeted
# (k into qkv_proj, gate into gate_up_proj), the case a sync must still get right.
LORA = LoraConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj", "up_proj"])
RAY = ["learner.world_size=2", "ray.torch_threads=1", "ray.learner_cpus=0.5", "ray.rollout_cpus=0.5",
       "ray.actor_start_timeout_s=600", "ray.call_timeout_s=300", "learner.warmup_fraction=0"]
OPTIONS = load_config(None, ["rl.kl_coef=0.1", "rl.kl_in=loss"]).rl.loss_options()  # steps use the reference
LR = 0.02
TIMEOUT = 300


def _batch(task, rows: int = 6, seed: int = 0) -> LearnerBatch:
    rng = np.random.default_rng(seed)
    prompts = task.prompts["train"][:(rows + 1) // 2]
    return LearnerBatch(prompts=[p for p in prompts for _ in range(2)][:rows],
                        tokens=np.asarray(task.target_tokens["train"][:rows]), advantages=rng.normal(size=rows))


def _on_ranks(group, fn) -> list:
    """fn(rank actor instance) on every rank, in rank order. fn is defined inside a test, so Ray
    pickles it by value (a module-level function goes by reference, to a module the ranks may not
    import)."""
    from rlreg.actors.session import get_with_timeout

    return get_with_timeout([r.__ray_call__.remote(fn) for r in group.ranks], TIMEOUT, "reading learner state")


def _logprobs(model, task, batch: LearnerBatch) -> np.ndarray:
    """logp [N, L] of the batch's tokens under an HF LM (or a PolicyModel, for vector input),
    computed here the way the learner does."""
    from rlreg.model.build import ModelMeta
    from rlreg.model.encoder import PolicyModel
    from rlreg.model.logprobs import NumberHead, answer_logits, gather_tokens

    meta = ModelMeta.load(task.model_dir)
    head = NumberHead(meta.number_token_ids, task.number_tokenizer.allowed)
    tokens = torch.as_tensor(np.asarray(batch.tokens), dtype=torch.long)
    policy = model if isinstance(model, PolicyModel) else PolicyModel(model, None, None)
    features = None if batch.features is None else torch.as_tensor(np.asarray(batch.features), dtype=torch.float32)
    with torch.no_grad():
        logits = answer_logits(policy.eval(), batch.prompts, head.token_ids[tokens], meta.pad_id, head.token_ids,
                               features)
        return gather_tokens(head.logprobs(logits), tokens).numpy()


def _learner_logprobs(group, batch: LearnerBatch) -> np.ndarray:
    return np.concatenate(group.call("token_logprobs", 1.0, batch=batch))


def _start_lm(task):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(task.model_dir, dtype=torch.float32)


# -- in process: the adapters' own logic ---------------------------------------------------------
def test_merged_weights_are_peft_merge_without_touching_the_model(tiny_task):
    lm = _start_lm(tiny_task)
    adapters = LoraAdapters(lm, LORA)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)  # lora_B starts at zero: make the merge matter
    before = {n: t.clone() for n, t in lm.state_dict().items()}
    merged = adapters.merged_state()
    want = copy.deepcopy(adapters.peft).merge_and_unload().state_dict()
    assert set(merged) == set(want) == set(_start_lm(tiny_task).state_dict())  # HF names, nothing else
    for name in want:
        torch.testing.assert_close(merged[name], want[name], rtol=0, atol=1e-6)
    assert all(torch.equal(t, before[n]) for n, t in lm.state_dict().items())  # the live model is unmerged
    sent = [name for name, _ in adapters.sync_tensors()]
    assert {n.split(".")[-2] for n in sent} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"}  # the untargeted siblings too, nothing outside


def test_gradient_checkpointing_gives_the_adapters_the_same_gradients(tiny_task):
    """learner.gradient_checkpointing with LoRA: the learner enables HF's non-reentrant checkpointing
    on the adapted model (learner_rank); recomputing the forward must not cut the adapters off from
    the loss even though the frozen base's inputs need no gradient."""
    from rlreg.model.build import ModelMeta
    from rlreg.model.encoder import PolicyModel
    from rlreg.model.logprobs import NumberHead, answer_logits, gather_tokens

    meta = ModelMeta.load(tiny_task.model_dir)
    head = NumberHead(meta.number_token_ids, tiny_task.number_tokenizer.allowed)
    batch = _batch(tiny_task)
    tokens = torch.as_tensor(np.asarray(batch.tokens), dtype=torch.long)

    def adapter_grads(checkpointing: bool) -> dict:
        torch.manual_seed(0)  # the same adapter initialisation both times
        lm = _start_lm(tiny_task)
        LoraAdapters(lm, LORA)
        with torch.no_grad():
            for p in lm.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.1)  # lora_B starts at zero: give lora_A a gradient too
        if checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy = PolicyModel(lm, None, None).train()  # HF checkpoints only in training mode
        logits = answer_logits(policy, batch.prompts, head.token_ids[tokens], meta.pad_id, head.token_ids, None)
        gather_tokens(head.logprobs(logits), tokens).sum().backward()
        assert lm.is_gradient_checkpointing == checkpointing
        return {n: p.grad.clone() for n, p in lm.named_parameters() if p.requires_grad}

    plain, checkpointed = adapter_grads(False), adapter_grads(True)
    assert plain and set(plain) == set(checkpointed)
    assert all(g.abs().max() > 0 for g in checkpointed.values())
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_lora_refuses_what_it_cannot_train(tiny_task, tiny_cfg):
    from rlreg.actors.learner import LearnerGroup

    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        LoraAdapters(_start_lm(tiny_task), LoraConfig(target_modules=["no_such_proj"]))
    with pytest.raises(ConfigError, match="lm_head"):
        LoraAdapters(_start_lm(tiny_task), LoraConfig(target_modules=["q_proj", "lm_head"]))
    cfg = load_config(None, ["learner.zero_stage=3"])
    with pytest.raises(ConfigError, match="model.lora.*learner.zero_stage=3"):  # before any actor starts
        LearnerGroup(tiny_task.model_dir, cfg.learner, LR, 10, cfg.ray, lora=LORA)


# -- the real stack: one 2-rank learner group ----------------------------------------------------
@pytest.fixture(scope="module")
def group(tiny_task, ray_session):
    from rlreg.actors.learner import LearnerGroup

    cfg = load_config(None, RAY)
    g = LearnerGroup(tiny_task.model_dir, cfg.learner, LR, 20, cfg.ray, lora=LORA)
    for seed in range(2):
        g.call("step", "rl", OPTIONS, batch=_batch(tiny_task, seed=seed))
    yield g
    g.shutdown()


@pytest.mark.engine
def test_only_adapters_train_and_both_ranks_agree(tiny_task, group):
    from safetensors.torch import load_file

    from rlreg.model.lora import hf_name

    def lm_state(rank) -> dict:  # the LM's parameters (peft names), and whether each trains
        return {n: (p.detach().clone().numpy(), p.requires_grad) for n, p in rank.engine.module.lm.named_parameters()}

    start = load_file(os.path.join(tiny_task.model_dir, "model.safetensors"))
    ranks = _on_ranks(group, lm_state)
    for state in ranks:
        trainable = {n for n, (_, grad) in state.items() if grad}
        assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == set(LORA.target_modules)
        for name, (value, grad) in state.items():
            if not grad:  # base weights: bit for bit the start model's
                assert np.array_equal(value, start[hf_name(name)].numpy()), name
        assert max(np.abs(v).max() for n, (v, _) in state.items() if ".lora_B." in n) > LR / 2  # they moved
    for name, (value, _) in ranks[0].items():
        np.testing.assert_array_equal(ranks[1][name][0], value)  # one model on both ranks
    # ZeRO 1-2 optimizer (learner.zero_stage default 1): the parameters it was given, before partitioning.
    optimized = _on_ranks(group, lambda r: sum(p.numel() for g in r.engine.optimizer.bit16_groups for p in g))
    assert optimized == [sum(v.size for v, grad in ranks[0].values() if grad)] * 2  # only adapters get Adam states


@pytest.mark.engine
def test_the_kl_reference_is_the_base_model(tiny_task, group):
    batch = _batch(tiny_task, rows=4, seed=5)
    reference = np.concatenate(group.call("reference_logprobs", 1.0, batch=batch))
    np.testing.assert_allclose(reference, _logprobs(_start_lm(tiny_task), tiny_task, batch), atol=1e-5)
    assert np.abs(_learner_logprobs(group, batch) - reference).max() > 1e-2  # the policy itself moved


@pytest.mark.engine
def test_both_sync_routes_send_the_changed_modules_and_match_the_learner(tiny_task, tiny_cfg, group):
    import ray

    from rlreg.actors.config import SyncConfig
    from rlreg.actors.rollout import RolloutGroup
    from rlreg.actors.weight_sync import CollectiveSync, ObjectStoreSync

    cfg = load_config(None, RAY)
    rollout = RolloutGroup(tiny_task.model_dir, tiny_cfg.engine, tiny_cfg.model.max_positions, cfg.ray)
    collective = CollectiveSync(SyncConfig(route="collective", bucket_mb=0.02, timeout_s=60))
    try:
        # The engine holds the base model, the learner its trained adapters.
        assert engine_learner_gap(tiny_task, rollout, group) > 1e-2
        ObjectStoreSync().sync(group, rollout)
        assert engine_learner_gap(tiny_task, rollout, group) < 1e-3
        sent = ray.get(group.publish_weights(), timeout=TIMEOUT)
        assert sent and all(".self_attn." in n or ".mlp." in n for n in sent)  # no embeddings, norms, head

        group.call("step", "rl", OPTIONS, batch=_batch(tiny_task, seed=2))
        assert engine_learner_gap(tiny_task, rollout, group) > 1e-3
        collective.sync(group, rollout)
        assert engine_learner_gap(tiny_task, rollout, group) < 1e-3
        assert collective.last["sync_buckets"] > 1
        specs = collective._plan[0]
        assert [s.name for s in specs] == list(sent) and collective.last["sync_bytes"] == sum(s.nbytes for s in specs)
        whole = sum(v.nbytes for v in _start_lm(tiny_task).state_dict().values())
        print(f"LoRA sync: {len(specs)} tensors, {collective.last['sync_bytes'] / 1e3:.0f} kB of the LM's "
              f"{whole / 1e3:.0f} kB in {collective.last['sync_buckets']} buckets, "
              f"{collective.last['sync_seconds']:.3f} s")
    finally:
        collective.close(group, rollout)
        rollout.shutdown()


@pytest.mark.engine
def test_the_saved_model_is_the_merged_policy_with_peft_adapters_beside_it(tiny_task, tiny_cfg, group, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rlreg.model.engine import NumberEngine

    out = group.save_model(tmp_path / "model", tiny_task.model_dir)
    start = tiny_task.model_dir
    # The files of a full fine-tune (the start directory's), plus the adapters in their subfolder.
    assert set(os.listdir(out)) == set(os.listdir(start)) | {ADAPTER_DIR}
    weights = lambda d: set(load_file(os.path.join(d, "model.safetensors")))  # noqa: E731
    assert weights(out) == weights(start)  # HF names: no adapter or base_layer entries
    batch = _batch(tiny_task, rows=4, seed=7)
    learner = _learner_logprobs(group, batch)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    np.testing.assert_allclose(_logprobs(merged, tiny_task, batch), learner, atol=1e-5)
    adapted = PeftModel.from_pretrained(_start_lm(tiny_task), str(out / ADAPTER_DIR))
    np.testing.assert_allclose(_logprobs(adapted.get_base_model(), tiny_task, batch), learner, atol=1e-5)

    engine = NumberEngine(out, tiny_cfg.engine, tiny_cfg.model.max_positions)  # vLLM, as from any model directory

    class Engine:  # engine_learner_gap's view of a rollout group
        def sample(self, inputs, allowed, n, temperature):
            return engine.sample(inputs["prompts"], allowed, n, temperature)

    try:
        assert engine_learner_gap(tiny_task, Engine(), group) < 1e-3
    finally:
        del engine


@pytest.mark.engine
def test_a_deepspeed_checkpoint_restores_adapters_and_optimizer(tiny_task, group, tmp_path):
    def adapters(rank):
        return {n: p.detach().clone().numpy() for n, p in rank.engine.module.named_parameters() if p.requires_grad}

    batch = _batch(tiny_task, seed=3)
    group.save_checkpoint(str(tmp_path), "t", {"step": 3})
    saved = _on_ranks(group, adapters)[0]
    group.call("step", "rl", OPTIONS, batch=batch)
    stepped = _on_ranks(group, adapters)[0]
    assert group.load_checkpoint(str(tmp_path), "t")["step"] == 3
    for name, value in _on_ranks(group, adapters)[0].items():
        np.testing.assert_array_equal(value, saved[name])
    group.call("step", "rl", OPTIONS, batch=batch)  # the same step again: Adam's moments came back too
    for name, value in _on_ranks(group, adapters)[0].items():
        np.testing.assert_allclose(value, stepped[name], rtol=0, atol=1e-6)


@pytest.mark.engine
def test_vector_input_keeps_its_trained_encoder_in_sync_and_its_start_encoder_in_the_reference(
        ray_session, tmp_path):
    """Vector input: the feature encoder trains in full beside the adapters. The engine gets it (and
    the token embeddings its prompt embeddings are made from) on the object-store route; the KL
    reference keeps the start model's encoder."""
    from conftest import TINY

    from rlreg.actors.learner import LearnerGroup
    from rlreg.actors.rollout import RolloutGroup
    from rlreg.actors.weight_sync import ObjectStoreSync
    from rlreg.model.build import ModelMeta
    from rlreg.model.policy import load_policy
    from rlreg.train.task import prepare_task

    cfg = load_config(None, [*TINY, *RAY, "learner.world_size=1", "data.input=vector", "model.soft_tokens=2",
                             "model.encoder_hidden=32", f"run_dir={tmp_path}"])
    task = prepare_task(cfg, tmp_path)
    learner = LearnerGroup(task.model_dir, cfg.learner, LR, 20, cfg.ray, lora=LORA)
    rollout = RolloutGroup(task.model_dir, cfg.engine, cfg.model.max_positions, cfg.ray)
    try:
        rows = np.arange(8)
        batch = LearnerBatch.of(task.inputs("train", rows), task.target_tokens["train"][rows])
        for _ in range(3):
            learner.call("step", "sft", cfg.sft.loss_options(), batch=batch)
        start = load_policy(task.model_dir, ModelMeta.load(task.model_dir))
        reference = np.concatenate(learner.call("reference_logprobs", 1.0, batch=batch))
        np.testing.assert_allclose(reference, _logprobs(start, task, batch), atol=1e-5)
        assert np.abs(_learner_logprobs(learner, batch) - reference).max() > 1e-2
        assert engine_learner_gap(task, rollout, learner) > 1e-2
        ObjectStoreSync().sync(learner, rollout)
        assert engine_learner_gap(task, rollout, learner) < 1e-3
    finally:
        rollout.shutdown()
        learner.shutdown()

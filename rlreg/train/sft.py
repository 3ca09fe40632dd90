"""The supervised stage: token-level losses on the target's number tokens, in the DeepSpeed learner
group, with early stopping on validation loss. Returns the best model's directory."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rlreg import console
from rlreg.actors.learner import LearnerGroup, merge_stats
from rlreg.algos.experience import LearnerBatch
from rlreg.data.batches import BatchCursor
from rlreg.rundir import RunDir
from rlreg.train.logger import RunLogger


def _stats(group: LearnerGroup, method: str, batch: LearnerBatch, options, what: str) -> dict:
    return merge_stats(group.call(method, "sft", options, batch=batch, what=what), batch.shard_sizes(group.world_size))


def run_sft(cfg, task, run_dir: Path, tracker=None) -> Path:
    sft = cfg.sft
    run = RunDir(run_dir)
    best_dir = run.sft_model
    group = LearnerGroup(task.model_dir, cfg.learner, sft.lr, sft.steps, cfg.ray, seed=cfg.seed, lora=cfg.model.lora)
    logger = RunLogger(run.path, "sft", tracker)
    options = sft.loss_options()
    cursor = BatchCursor(len(task.prompts["train"]), sft.batch_size, cfg.seed)
    val_batch = LearnerBatch.of(task.inputs("val"), task.target_tokens["val"])
    best, stale = float("inf"), 0
    bar = console.progress(sft.steps, "sft")
    try:
        for step in range(sft.steps):
            bar.update(1)
            idx = cursor.next()
            batch = LearnerBatch.of(task.inputs("train", idx), task.target_tokens["train"][idx])
            stats = _stats(group, "step", batch, options, "learner sft step")
            logger.log(step, stats, "train")
            bar.set_postfix(loss=f"{stats['loss']:.4f}", best_val=f"{best:.4g}", refresh=False)
            if (step + 1) % sft.eval_every and step + 1 != sft.steps:
                continue
            val = _stats(group, "evaluate", val_batch, options, "learner sft eval")
            greedy = np.concatenate(group.call("greedy", batch=val_batch, what="learner greedy decode"))
            greedy_values, _ = task.decode(task.hf_tokens(greedy))
            val["greedy_rmse"] = float(np.sqrt(np.nanmean((greedy_values - task.y["val"]) ** 2)))
            logger.log(step, val, "val")
            score = val["greedy_rmse"] if sft.select_by == "rmse" else val["loss"]
            if score < best - 1e-9:
                best, stale = score, 0
                group.save_model(best_dir, task.model_dir)
            else:
                stale += 1
                if stale >= sft.patience:
                    bar.set_postfix_str(f"early stop (best validation {sft.select_by} {best:.4g})", refresh=False)
                    break
    finally:
        bar.close()
        logger.close()
        group.shutdown()
    return best_dir

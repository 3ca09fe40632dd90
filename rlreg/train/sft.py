"""The supervised stage: token-level losses on the target's number tokens, in the DeepSpeed learner
group, with early stopping on validation loss. Returns the best model's directory."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlreg.errors import ConfigError

LOSSES = ("ce", "ntl_was", "dist2")


def sft_options(cfg: SFTConfig) -> dict:
    return {"loss": cfg.loss, "ntl_weight": cfg.ntl_weight, "dist2_sigma": cfg.dist2_sigma}


def run_sft(cfg, task, run_dir: Path) -> Path:
    from rlreg.actors.learner import LearnerGroup
    from rlreg.train.export import atomic_replace_dir, copy_model_extras
    from rlreg.train.logger import RunLogger, progress

    sft = cfg.sft
    best_dir = Path(run_dir) / "sft_model"
    group = LearnerGroup(task.model_dir, cfg.learner, sft.lr, sft.steps, cfg.ray, seed=cfg.seed)
    logger = RunLogger(run_dir, "sft")
    options = sft_options(sft)
    cursor = BatchCursor(len(task.prompts["train"]), sft.batch_size, cfg.seed)
    val_batch = {**task.inputs("val"), "tokens": task.target_tokens["val"]}
    best, stale = float("inf"), 0
    bar = progress(sft.steps, "sft")
    try:
        for step in range(sft.steps):
            bar.update(1)
            idx = cursor.next()
            stats = group.step("sft", {**task.inputs("train", idx), "tokens": task.target_tokens["train"][idx]},
                               options)
            logger.log(step, stats, "train")
            bar.set_postfix(loss=f"{stats['loss']:.4f}", best_val=f"{best:.4g}", refresh=False)
            if (step + 1) % sft.eval_every and step + 1 != sft.steps:
                continue
            val = group.evaluate("sft", val_batch, options)
            greedy_values, _ = task.decode(task.hf_tokens(group.greedy(val_batch)))
            val["greedy_rmse"] = float(np.sqrt(np.nanmean((greedy_values - task.y["val"]) ** 2)))
            logger.log(step, val, "val")
            score = val["greedy_rmse"] if sft.select_by == "rmse" else val["loss"]
            if score < best - 1e-9:
                best, stale = score, 0
                tmp = best_dir.with_name(best_dir.name + ".tmp")
                group.save_model(str(tmp))
                copy_model_extras(task.model_dir, tmp)
                atomic_replace_dir(tmp, best_dir)
            else:
                stale += 1
                if stale >= sft.patience:
                    bar.write(f"sft: early stop at step {step + 1} (best validation {sft.select_by} {best:.4g})")
                    break
    finally:
        bar.close()
        logger.close()
        group.shutdown()
    return best_dir

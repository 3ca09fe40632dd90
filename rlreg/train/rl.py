"""The RL stage: one controller drives rollout workers (vLLM), the reward pool and the DeepSpeed
learner group. One step: batch of inputs → G constrained samples each (+ a greedy decode for
ReMax) → rewards → advantages → learner update(s) → weight sync → log."""
from __future__ import annotations

import base64
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rlreg.algos.config import AlgoConfig
from rlreg.errors import ConfigError

LATEST = "latest.json"  # names the newest complete RL checkpoint; written last, by an atomic rename
ROLLOUT_RNG_FILE = "rollout_rng.json"  # the engines' sampler RNG states, inside a checkpoint's tag dir


def require_rl_resources(cfg) -> None:
    """The three roles run side by side: check their sum fits before starting any of them (a request
    that cannot fit would otherwise wait for actors or a placement group until the start timeout)."""
    from rlreg import device
    from rlreg.actors.session import require_resources

    rl, ray_cfg = cfg.rl, cfg.ray
    cpus = (rl.rollout_workers * ray_cfg.rollout_cpus + cfg.reward.workers * ray_cfg.reward_cpus
            + cfg.learner.world_size * ray_cfg.learner_cpus)
    gpus = rl.rollout_workers * device.ray_gpus_per_actor(1.0) + (cfg.learner.world_size if device.has_cuda() else 0)
    require_resources(cpus, gpus, f"the RL stage ({rl.rollout_workers} rollout worker(s) x ray.rollout_cpus="
                                  f"{ray_cfg.rollout_cpus:g}, {cfg.reward.workers} reward actor(s) x ray.reward_cpus="
                                  f"{ray_cfg.reward_cpus:g}, learner.world_size={cfg.learner.world_size} x "
                                  f"ray.learner_cpus={ray_cfg.learner_cpus:g})")


def group_stats(prefix: str, values: np.ndarray) -> dict:
    return {f"{prefix}_mean": float(np.mean(values)), f"{prefix}_std": float(np.std(values)),
            f"{prefix}_min": float(np.min(values)), f"{prefix}_max": float(np.max(values))}


class RLRunner:
    """Holds the three actor roles for one RL run and steps them."""

    def __init__(self, cfg, task, start_model_dir: Path, run_dir: Path):
        from rlreg.actors.learner import LearnerGroup
        from rlreg.actors.reward import RewardPool
        from rlreg.actors.rollout import RolloutGroup
        from rlreg.data.batches import BatchCursor

        self.cfg, self.task, self.run_dir = cfg, task, Path(run_dir)
        self.start_model_dir = Path(start_model_dir)
        rl = cfg.rl
        self.rollout = RolloutGroup(start_model_dir, cfg.engine, cfg.model.max_positions, cfg.ray, rl.rollout_workers)
        self.rewards = RewardPool(task.number_tokenizer.describe(), task.scaler.state_dict(), cfg.reward, cfg.ray)
        self.learner = LearnerGroup(start_model_dir, cfg.learner, rl.lr, rl.steps * rl.ppo_epochs, cfg.ray,
                                    seed=cfg.seed)
        self.cursor = BatchCursor(len(task.prompts["train"]), rl.batch_size, cfg.seed + 1)
        self.step_index = 0
        self.learner_restarts = 0

    # -- one step -----------------------------------------------------------------------------
    def _rewards(self, hf_ids: np.ndarray, targets: np.ndarray) -> dict:
        flat = hf_ids.reshape(-1, hf_ids.shape[-1])
        number_ids = np.asarray([self.task.codec.to_number_ids(r) for r in flat])
        return self.rewards.score(number_ids, targets) | {"number_ids": number_ids}

    def step(self) -> dict:
        from rlreg.algos.advantages import get_advantage, needs_greedy
        from rlreg.algos.filtering import filtered_fraction, std_filter
        from rlreg.algos.losses import kl_for_reward
        from rlreg.algos.token_losses import expert_targets

        rl, task = self.cfg.rl, self.task
        timings = {}
        t0 = time.monotonic()
        idx = self.cursor.next()
        inputs = task.inputs("train", idx)
        y = task.y["train"][idx]
        batch_size, group = len(idx), rl.group_size
        samples = self.rollout.sample(inputs, task.allowed_hf, group, rl.temperature)
        greedy = self.rollout.sample(inputs, task.allowed_hf, 1, 0.0) if needs_greedy(rl.advantage) else None
        timings["time_rollout"] = time.monotonic() - t0

        t0 = time.monotonic()
        scored = self._rewards(samples.token_ids, np.repeat(y, group))
        rewards = scored["rewards"].reshape(batch_size, group)
        baseline = None
        if greedy is not None:
            baseline = self._rewards(greedy.token_ids, y)["rewards"]
        timings["time_reward"] = time.monotonic() - t0

        batch = {"prompts": [p for p in inputs["prompts"] for _ in range(group)], "tokens": scored["number_ids"],
                 "old_logp": samples.logprobs.reshape(batch_size * group, -1)}
        if "features" in inputs:
            batch["features"] = np.repeat(inputs["features"], group, axis=0)
        stats: dict = {}
        if rl.kl_coef > 0 and rl.kl_in == "reward":
            import torch

            ref = self.learner.reference_logprobs(batch, rl.temperature)
            kl = kl_for_reward(torch.as_tensor(batch["old_logp"]), torch.as_tensor(ref),
                               torch.ones(ref.shape), rl.kl_kind, rl.kl_coef)
            rewards = rewards - kl.reshape(batch_size, group)
            stats["kl_reward"] = float(kl.mean())
            # The greedy decode's KL is not estimated: ReMax's baseline stays its raw reward.
        keep = np.ones(batch_size, dtype=bool)
        if rl.std_filter_tol is not None:
            keep = std_filter(rewards, rl.std_filter_tol)
        stats["filtered_fraction"] = filtered_fraction(keep) if rl.std_filter_tol is not None else 0.0
        advantages = get_advantage(rl.advantage)(rewards, baseline, rl.adv_eps)
        rows = np.repeat(keep, group)
        if rl.expert_ce_coef > 0:
            batch["expert"] = expert_targets(scored["number_ids"], task.scaler.transform(np.repeat(y, group)),
                                             task.number_tokenizer.expert_next_ids)
        batch["advantages"] = advantages.reshape(-1)
        batch = {k: ([v[i] for i in np.flatnonzero(rows)] if isinstance(v, list) else v[rows]) for k, v in batch.items()}

        t0 = time.monotonic()
        if rows.any():
            for _ in range(rl.ppo_epochs):
                stats.update(self.learner.step("rl", batch, rl.learner_options()))
        timings["time_learn"] = time.monotonic() - t0

        t0 = time.monotonic()
        self.step_index += 1
        if self.step_index % rl.sync_every == 0 or self.step_index == rl.steps:
            self.sync()
        timings["time_sync"] = time.monotonic() - t0

        pred = scored["pred"]
        stats.update(group_stats("reward", rewards))
        stats.update(group_stats("advantage", advantages))
        stats.update(timings)
        stats["invalid_rate"] = float(1 - scored["valid"].mean())
        stats["reward_failures"] = int(scored["failed"].sum())
        stats["reward_errors"] = scored["errors"][:3]
        finite = np.isfinite(pred)
        stats["train_rmse_samples"] = float(np.sqrt(np.mean((pred[finite] - np.repeat(y, group)[finite]) ** 2))) \
            if finite.any() else float("nan")
        return stats

    def sync(self) -> list[int]:
        return self.rollout.load_weights(self.learner.publish_weights())

    def validation_rmse(self) -> float:
        from rlreg.evaluate.aggregate import aggregate
        from rlreg.evaluate.sampling import sample_values

        values, valid = sample_values(self.rollout, self.task, "val", self.cfg.rl.eval_samples,
                                      self.cfg.eval.temperature, self.cfg.eval.chunk_inputs)
        yhat = aggregate(values, valid, "mean")
        ok = np.isfinite(yhat)
        return float(np.sqrt(np.mean((yhat[ok] - self.task.y["val"][ok]) ** 2))) if ok.any() else float("nan")

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Every rank's DeepSpeed state (weights, optimizer, LR schedule, step, data cursor) and the
        engines' sampler RNG; then latest.json, written last by an atomic rename: a checkpoint exists
        once latest.json names it. Older checkpoints are removed after that."""
        ckpt_dir = self.run_dir / "rl_checkpoints"
        tag = f"step{self.step_index:06d}"
        state = {"step": self.step_index, "cursor": self.cursor.state()}
        self.learner.save_checkpoint(str(ckpt_dir), tag, state)
        rng = [base64.b64encode(s).decode() for s in self.rollout.rng_states()]
        write_json_atomic(ckpt_dir / tag / ROLLOUT_RNG_FILE, {"rollout_rng": rng})
        write_json_atomic(ckpt_dir / LATEST, {"tag": tag, **state})
        for old in ckpt_dir.glob("step*"):
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
        return ckpt_dir / tag

    def restore(self) -> bool:
        """Load the checkpoint latest.json names into the learner group, push its weights to the
        engines and set their sampler RNG as it was then; False when there is none."""
        latest = self.run_dir / "rl_checkpoints" / LATEST
        if not latest.is_file():
            return False
        tag = json.loads(latest.read_text())["tag"]
        state = self.learner.load_checkpoint(str(latest.parent), tag)
        self.step_index = int(state["step"])
        self.cursor.epoch, self.cursor.offset = state["cursor"]["epoch"], state["cursor"]["offset"]
        self.sync()
        rng_file = latest.parent / tag / ROLLOUT_RNG_FILE
        if rng_file.is_file():
            states = [base64.b64decode(s) for s in json.loads(rng_file.read_text())["rollout_rng"]]
            if len(states) == len(self.rollout.workers):
                self.rollout.set_rng_states(states)
            else:  # rollouts stay valid, only not the ones the saved run would have drawn
                print(f"rl: {rng_file} holds {len(states)} sampler states for {len(self.rollout.workers)} "
                      f"rollout workers now; sampling continues from fresh seeds")
        return True

    def recover_learner(self, err: Exception) -> None:
        """A learner rank died or hung: start a new learner group and restore the last checkpoint
        (without one, the start model at step 0), at most ray.max_restarts times a run."""
        from rlreg.actors.learner import LearnerGroup, LearnerLost
        from rlreg.data.batches import BatchCursor

        limit = self.cfg.ray.max_restarts
        if self.learner_restarts >= limit:
            raise LearnerLost(f"{err}; not restored: {self.learner_restarts} restore(s) already this run "
                              f"(ray.max_restarts={limit})") from err
        self.learner_restarts += 1
        self.learner.shutdown()
        rl = self.cfg.rl
        self.learner = LearnerGroup(self.start_model_dir, self.cfg.learner, rl.lr, rl.steps * rl.ppo_epochs,
                                    self.cfg.ray, seed=self.cfg.seed)
        if not self.restore():
            self.step_index = 0
            self.cursor = BatchCursor(len(self.task.prompts["train"]), rl.batch_size, self.cfg.seed + 1)
            self.sync()

    def shutdown(self) -> None:
        """Idempotent: stops every actor and frees the placement group once."""
        for part in (self.rollout, self.rewards, self.learner):
            part.shutdown()


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temporary name, then rename: readers see the old file or the new one, never half."""
    import os

    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the records of steps <= last_step (and drop a line cut short by a crash): the steps a
    resumed or restored run does again are then logged once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)


def train_rl(runner: RLRunner, resume: bool = False,
             on_step: Callable[[int, dict], None] | None = None) -> tuple[Path, dict]:
    """Run the RL loop on a built runner; returns the final model directory and the last
    validation metrics. The runner keeps its engines (already holding the final weights).
    `on_step(step, stats)`, if given, sees each step's logged stats (with val_rmse on eval steps),
    e.g. for Ray Tune reporting; raising from it stops the loop."""
    from rlreg.actors.learner import LearnerLost
    from rlreg.train.export import atomic_replace_dir, copy_model_extras
    from rlreg.train.logger import RunLogger, progress

    rl, run_dir = runner.cfg.rl, runner.run_dir
    if resume:
        print(f"rl: resumed at step {runner.step_index}" if runner.restore()
              else "rl: no RL checkpoint in the run directory; RL starts at step 0")
        truncate_log(run_dir / "rl_log.jsonl", runner.step_index)
    logger = RunLogger(run_dir, "rl")

    def recover(err: LearnerLost) -> None:
        nonlocal logger
        bar.write(f"rl: {err}; restoring the learner group from the last checkpoint")
        runner.recover_learner(err)
        bar.write(f"rl: learner group restored at step {runner.step_index}")
        logger.close()
        truncate_log(logger.path, runner.step_index)
        logger = RunLogger(run_dir, "rl")
        bar.n = runner.step_index
        bar.refresh()

    last_val: dict = {}
    bar = progress(rl.steps, "rl", initial=runner.step_index)
    try:
        while runner.step_index < rl.steps:
            try:
                stats = runner.step()
            except LearnerLost as err:
                recover(err)
                continue
            for message in stats.pop("reward_errors"):
                bar.write(f"rl step {runner.step_index}: {message}")
            if (rl.eval_every and runner.step_index % rl.eval_every == 0) or runner.step_index == rl.steps:
                last_val = {"val_rmse": runner.validation_rmse()}
                stats.update(last_val)
            logger.log(runner.step_index, stats, "rl")
            if on_step is not None:
                on_step(runner.step_index, stats)
            bar.update(1)
            bar.set_postfix(reward=f"{stats['reward_mean']:.3f}",
                            val_rmse=f"{last_val.get('val_rmse', float('nan')):.4g}",
                            s_rollout=f"{stats['time_rollout']:.2f}", s_learn=f"{stats['time_learn']:.2f}", refresh=False)
            if rl.checkpoint_every and runner.step_index % rl.checkpoint_every == 0:
                try:
                    runner.save_checkpoint()
                except LearnerLost as err:
                    recover(err)
    finally:
        bar.close()
        logger.close()
    final_dir = run_dir / "rl_model"
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crash: start the directory afresh
    runner.learner.save_model(str(tmp))
    copy_model_extras(runner.start_model_dir, tmp)
    atomic_replace_dir(tmp, final_dir)
    return final_dir, last_val

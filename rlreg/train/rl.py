"""The RL stage: one controller drives rollout workers (vLLM), the reward pool and the DeepSpeed
learner group. One step: batch of inputs → G constrained samples each (+ a greedy decode for
ReMax) → rewards → experience (rlreg.algos.experience: KL, filter, advantages) → learner
update(s) → weight sync → log. Checkpoints: rlreg.train.checkpoints."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from rlreg import console
from rlreg.actors.learner import LearnerGroup, LearnerLost, merge_stats
from rlreg.actors.reward import RewardPool
from rlreg.actors.placement import plan_for
from rlreg.actors.rollout import RolloutGroup
from rlreg.actors.weight_sync import make_weight_sync
from rlreg.actors import session
from rlreg.actors.session import release_shared_placement, reserve_shared_placement
from rlreg.algos.advantages import needs_greedy
from rlreg.algos.experience import LearnerBatch, make_experience
from rlreg.data.batches import BatchCursor
from rlreg.evaluate.aggregate import aggregate
from rlreg.evaluate.sampling import sample_values
from rlreg.model.build import encoder_spec
from rlreg.rundir import RunDir
from rlreg.train import checkpoints
from rlreg.train.logger import RunLogger


def require_rl_resources(cfg) -> None:
    """The three roles run side by side: check their sum fits before starting any of them (a request
    that cannot fit would otherwise wait for actors or a placement group until the start timeout)."""
    # session.require_resources looked up at call time: tests stand in for it there.
    rl, ray_cfg, plan = cfg.rl, cfg.ray, plan_for(cfg)
    cpus = plan.total("CPU") + cfg.reward.workers * ray_cfg.reward_cpus
    gpus = plan.total("GPU")
    session.require_resources(cpus, gpus, f"the RL stage ({rl.rollout_workers} rollout worker(s) x ray.rollout_cpus="
                                          f"{ray_cfg.rollout_cpus:g}, {cfg.reward.workers} reward actor(s) x "
                                          f"ray.reward_cpus={ray_cfg.reward_cpus:g}, learner.world_size="
                                          f"{cfg.learner.world_size} x ray.learner_cpus={ray_cfg.learner_cpus:g})")


class Timings:
    """Wall seconds of named phases: `with timings("time_rollout"): ...`, then `.seconds`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = time.monotonic() - t0


def sample_stats(scored: dict, y: np.ndarray) -> dict:
    """What the reward pool reports about the samples [B, G]: failures, errors, sample RMSE."""
    pred = scored["pred"]
    finite = np.isfinite(pred)
    rmse = float(np.sqrt(np.mean((pred - y[:, None])[finite] ** 2))) if finite.any() else float("nan")
    return {"reward_failures": int(scored["failed"].sum()), "reward_errors": scored["errors"][:3],
            "train_rmse_samples": rmse}


class RLRunner:
    """Holds the three actor roles for one RL run and steps them."""

    def __init__(self, cfg, task, start_model_dir: Path, run_dir: Path):
        self.cfg, self.task, self.run_dir = cfg, task, Path(run_dir)
        self.start_model_dir = Path(start_model_dir)
        rl = cfg.rl
        # ray.colocate: one placement group for engines and learner ranks, GPU i shared by engine i
        # and rank i (rlreg.actors.placement); a restored learner group goes back into it.
        self.shared = reserve_shared_placement(plan_for(cfg), cfg.ray) if cfg.ray.colocate else None
        self.rollout = self.rewards = self.learner = None
        try:
            self.rollout = RolloutGroup(start_model_dir, cfg.engine, cfg.model.max_positions, cfg.ray,
                                        rl.rollout_workers, shared=self.shared)
            self.rewards = RewardPool(task.number_tokenizer.describe(), task.scaler.state_dict(), cfg.reward, cfg.ray,
                                      task.column_names)
            self.learner = self.start_learner()
        except BaseException:
            # In a process that goes on (RLRegressor, a Tune trial, a test session) the parts already
            # started would hold the session's CPUs, and the next start would wait for them.
            self.shutdown()
            raise
        self.weights = make_weight_sync(cfg.sync, takes_features=encoder_spec(start_model_dir) is not None)
        if self.weights.route == "collective":
            # A rollout worker replaced mid-step (it died while sampling) has no object to load the
            # current weights from: every engine takes them from the learner again.
            self.rollout.resync = self.sync
        self.cursor, self.step_index = self._fresh_cursor(), 0
        self.learner_restarts = 0

    def start_learner(self) -> LearnerGroup:
        rl = self.cfg.rl
        return LearnerGroup(self.start_model_dir, self.cfg.learner, rl.lr, rl.steps * rl.ppo_epochs, self.cfg.ray,
                            seed=self.cfg.seed, shared=self.shared, lora=self.cfg.model.lora)

    def _fresh_cursor(self) -> BatchCursor:
        return BatchCursor(len(self.task.prompts["train"]), self.cfg.rl.batch_size, self.cfg.seed + 1)

    def start_over(self) -> None:
        """Step 0 on the start model: the data cursor afresh, the engines back to the learner's weights."""
        self.cursor, self.step_index = self._fresh_cursor(), 0
        self.sync()

    def _wake_engines(self) -> None:
        if self.cfg.ray.colocate:
            self.rollout.wake_up()  # no-op for an engine already awake

    # -- one step -----------------------------------------------------------------------------
    def step(self) -> dict:
        rl, task, timings = self.cfg.rl, self.task, Timings()
        idx = self.cursor.next()
        inputs, y = task.inputs("train", idx), task.y["train"][idx]
        # Only a reward function that takes data columns gets them: none are built for the others.
        columns = task.columns("train", idx) if self.rewards.columns else None
        with timings("time_rollout"):
            # ReMax's greedy decode rides in the same engine calls as the samples.
            draws = [(rl.group_size, rl.temperature)] + ([(1, 0.0)] if needs_greedy(rl.advantage) else [])
            samples, *greedy = self.rollout.sample_draws(inputs, task.allowed_hf, draws)
            greedy = greedy[0] if greedy else None
        with timings("time_reward"):
            scored = self._score(samples.token_ids, y, columns)
            baseline = None if greedy is None else self._score(greedy.token_ids, y, columns)["rewards"][:, 0]
        if self.cfg.ray.colocate:
            self.rollout.sleep()  # the learner ranks sharing the engines' GPUs compute from here on
        ref = self._reference_logprobs(inputs, scored["number_ids"]) if rl.kl_coef > 0 and rl.kl_in == "reward" else None
        experience, stats = make_experience(
            inputs, scored["number_ids"], samples.logprobs, scored["rewards"], scored["valid"], task.scaler.transform(y),
            rl, expert_next_ids=task.number_tokenizer.expert_next_ids, baseline=baseline, ref_logp=ref)
        with timings("time_learn"):
            stats.update(self._learn(experience.learner_batch()))
        with timings("time_sync"):
            self._wake_engines()  # every step: the next rollouts need them, synced or not
            self.step_index += 1
            if self.step_index % rl.sync_every == 0 or self.step_index == rl.steps:
                self.sync()
        return stats | sample_stats(scored, y) | timings.seconds


    def _score(self, hf_ids: np.ndarray, y: np.ndarray, columns: dict | None) -> dict:
        """The reward pool's results for samples [B, n, L] of the batch's rows, shaped [B, n], with
        their number-token ids [B, n, L]; each row's targets and data columns repeat n times."""
        batch, n, length = hf_ids.shape
        number_ids = np.asarray([self.task.codec.to_number_ids(r) for r in hf_ids.reshape(-1, length)])
        repeated = None if columns is None else {k: np.repeat(v, n) for k, v in columns.items()}
        scored = self.rewards.score(number_ids, np.repeat(y, n), repeated)
        out = {k: scored[k].reshape(batch, n) for k in ("rewards", "pred", "valid", "failed")}
        return out | {"errors": scored["errors"], "number_ids": number_ids.reshape(batch, n, length)}

    def _reference_logprobs(self, inputs: dict, number_ids: np.ndarray) -> np.ndarray:
        """The frozen start model's logprobs [B, G, L] of the samples (KL in the reward)."""
        batch = LearnerBatch.of_rollouts(inputs, number_ids)
        parts = self.learner.call("reference_logprobs", self.cfg.rl.temperature, batch=batch,
                                  what="reference logprobs")
        return np.concatenate(parts).reshape(number_ids.shape)

    def _learn(self, batch: LearnerBatch) -> dict:
        """rl.ppo_epochs optimizer steps on the batch (none when the filter dropped every group)."""
        stats: dict = {}
        options = self.cfg.rl.loss_options()
        for _ in range(self.cfg.rl.ppo_epochs if len(batch) else 0):
            results = self.learner.call("step", "rl", options, batch=batch, what="learner rl step")
            stats.update(merge_stats(results, batch.shard_sizes(self.learner.world_size)))
        return stats

    def sync(self) -> list[int]:
        """The learner's current weights into every engine (sync.route); the engines' weight versions."""
        self._wake_engines()  # a sync writes into the engines' weights (asleep after a failed update too)
        return self.weights.sync(self.learner, self.rollout)

    def validation_rmse(self) -> float:
        values, valid = sample_values(self.rollout, self.task, "val", self.cfg.rl.eval_samples,
                                      self.cfg.eval.temperature, self.cfg.eval.chunk_inputs)
        yhat = aggregate(values, valid, "mean")
        ok = np.isfinite(yhat)
        return float(np.sqrt(np.mean((yhat[ok] - self.task.y["val"][ok]) ** 2))) if ok.any() else float("nan")

    # -- checkpoints (rlreg.train.checkpoints) ---------------------------------------------------
    def save_checkpoint(self) -> Path:
        return checkpoints.save_checkpoint(self)

    def restore(self) -> bool:
        return checkpoints.restore_checkpoint(self)

    def recover_learner(self, err: Exception) -> None:
        checkpoints.recover_learner(self, err)

    def shutdown(self) -> None:
        """Idempotent: stops every actor and frees the placement group once."""
        for part in (self.rollout, self.rewards, self.learner):
            if part is not None:  # None: the constructor failed before starting it
                part.shutdown()
        if getattr(self, "shared", None) is not None:
            release_shared_placement(self.shared)
            self.shared = None


def train_rl(runner: RLRunner, resume: bool = False,
             on_step: Callable[[int, dict], None] | None = None, tracker=None) -> tuple[Path, dict]:
    """Run the RL loop on a built runner; returns the final model directory and the last
    validation metrics. The runner keeps its engines (already holding the final weights).
    `on_step(step, stats)`, if given, sees each step's logged stats (with val_rmse on eval steps),
    e.g. for Ray Tune reporting; raising from it stops the loop. `tracker` (rlreg.train.tracking)
    gets every logged step too."""
    rl, run = runner.cfg.rl, RunDir(runner.run_dir)
    if resume:
        console.say(f"rl: resumed at step {runner.step_index}" if runner.restore()
              else "rl: no RL checkpoint in the run directory; RL starts at step 0")
        checkpoints.truncate_log(run.log("rl"), runner.step_index)
    logger = RunLogger(run.path, "rl", tracker)

    def recover(err: LearnerLost) -> None:
        nonlocal logger
        bar.write(f"rl: {err}; restoring the learner group from the last checkpoint")
        runner.recover_learner(err)
        bar.write(f"rl: learner group restored at step {runner.step_index}")
        logger.close()
        checkpoints.truncate_log(logger.path, runner.step_index)
        logger = RunLogger(run.path, "rl", tracker)
        bar.n = runner.step_index
        bar.refresh()

    last_val: dict = {}
    bar = console.progress(rl.steps, "rl", initial=runner.step_index)
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
    return runner.learner.save_model(run.rl_model, runner.start_model_dir), last_val

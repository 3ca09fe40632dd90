"""RL checkpoints of a run (RunDir.rl_checkpoints): save, restore, and recovering a lost learner
group from the last one; truncate_log keeps a log consistent with the step a run continues from.

A checkpoint is every learner rank's DeepSpeed state (weights, optimizer, LR schedule, step, data
cursor) and the engines' sampler RNG; it exists once latest.json names it. The functions take the
RL runner (rlreg.train.rl.RLRunner, or anything with its run_dir, learner, rollout, cursor and
step_index)."""
from __future__ import annotations

import base64
import shutil
from pathlib import Path

from rlreg.actors.learner import LearnerLost
from rlreg.io import read_json, read_jsonl, write_json, write_text
from rlreg.rundir import RLCheckpointFiles, RunDir


def save_checkpoint(runner) -> Path:
    """Write the checkpoint of runner.step_index; latest.json last, by an atomic rename. Older
    checkpoints are removed only after that, so a crash mid-save keeps the previous one."""
    ckpt_dir = RunDir(runner.run_dir).rl_checkpoints
    tag = RLCheckpointFiles.tag(runner.step_index)
    state = {"step": runner.step_index, "cursor": runner.cursor.state()}
    runner.learner.save_checkpoint(str(ckpt_dir), tag, state)
    rng = [base64.b64encode(s).decode() for s in runner.rollout.rng_states()]
    write_json(ckpt_dir / tag / RLCheckpointFiles.ROLLOUT_RNG, {"rollout_rng": rng})
    write_json(ckpt_dir / RLCheckpointFiles.LATEST, {"tag": tag, **state})
    for old in ckpt_dir.glob("step*"):
        if old.is_dir() and old.name != tag:
            shutil.rmtree(old, ignore_errors=True)
    return ckpt_dir / tag


def restore_checkpoint(runner) -> bool:
    """Load the checkpoint latest.json names into the learner group, push its weights to the
    engines and set their sampler RNG as it was then; False when there is none."""
    ckpt_dir = RunDir(runner.run_dir).rl_checkpoints
    latest = ckpt_dir / RLCheckpointFiles.LATEST
    if not latest.is_file():
        return False
    tag = read_json(latest)["tag"]
    state = runner.learner.load_checkpoint(str(ckpt_dir), tag)
    runner.step_index = int(state["step"])
    runner.cursor.restore(state["cursor"])
    runner.sync()
    rng_file = ckpt_dir / tag / RLCheckpointFiles.ROLLOUT_RNG
    if rng_file.is_file():
        states = [base64.b64decode(s) for s in read_json(rng_file)["rollout_rng"]]
        if len(states) == len(runner.rollout.workers):
            runner.rollout.set_rng_states(states)
        else:  # rollouts stay valid, only not the ones the saved run would have drawn
            print(f"rl: {rng_file} holds {len(states)} sampler states for {len(runner.rollout.workers)} "
                  f"rollout workers now; sampling continues from fresh seeds")
    return True


def recover_learner(runner, err: Exception) -> None:
    """A learner rank died or hung: start a new learner group and restore the last checkpoint
    (without one, the start model at step 0), at most ray.max_restarts times a run."""
    limit = runner.cfg.ray.max_restarts
    if runner.learner_restarts >= limit:
        raise LearnerLost(f"{err}; not restored: {runner.learner_restarts} restore(s) already this run "
                          f"(ray.max_restarts={limit})") from err
    runner.learner_restarts += 1
    runner.learner.shutdown()
    runner.learner = runner.start_learner()
    if not restore_checkpoint(runner):
        runner.start_over()


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the records of steps <= last_step (and drop a line cut short by a crash): the steps a
    resumed or restored run does again are then logged once."""
    if not path.is_file():
        return
    write_text(path, "".join(line + "\n" for line, record in read_jsonl(path) if record.get("step", 0) <= last_step))

"""Actor faults on the real stack (Ray actors, vLLM engine, DeepSpeed learner, reward actors), each
killed with `ray.kill` in the middle of a run:

- rollout worker: RolloutGroup starts a replacement, loads the last published weights into it and
  retries the call; the step completes and the new engine samples from the learner's current policy;
- reward actor: its chunk is scored again on a replacement (see also tests/actors/test_reward_pool.py::
  test_killed_reward_actor_is_replaced_and_its_chunk_retried);
- learner rank: the RL loop starts a new learner group, restores the last checkpoint (weights bit
  for bit), re-does the steps after it and logs each step once."""
import json
import time

import numpy as np
import pytest
from conftest import tiny_runner

from rlreg.algos.experience import LearnerBatch
from rlreg.config import load_config

pytestmark = pytest.mark.engine

RL = ["learner.world_size=1", "reward.workers=1", "rl.rollout_workers=1", "rl.batch_size=4", "rl.group_size=4",
      "rl.advantage=grpo", "rl.lr=0.003", "rl.eval_every=0", "rl.eval_samples=2", "ray.torch_threads=1",
      "ray.actor_start_timeout_s=600", "ray.call_timeout_s=300"]


@pytest.fixture(scope="module")
def runner(tiny_task, tiny_cfg, ray_session, tmp_path_factory):
    r = tiny_runner(tiny_task, tiny_cfg, RL, tmp_path_factory.mktemp("faults_run"))
    yield r
    r.shutdown()


def _fixed_batch(runner) -> LearnerBatch:
    return LearnerBatch(prompts=runner.task.prompts["val"][:2] * 2,
                        tokens=np.asarray(runner.task.target_tokens["val"][:2].tolist() * 2))


def _logprobs(runner, batch: LearnerBatch) -> np.ndarray:
    return np.concatenate(runner.learner.call("token_logprobs", batch=batch))


def test_kill_rollout_worker_mid_run_restarts_it_with_current_weights(runner):
    import ray

    batch = _fixed_batch(runner)
    before = _logprobs(runner, batch)
    runner.step()  # the engine now holds the step-1 weights (published, then kept by RolloutGroup)
    moved = np.abs(_logprobs(runner, batch) - before).max()
    assert moved > 1e-2, "the step barely moved the policy: the checks below would not tell old weights apart"

    dead = runner.rollout.workers[0]
    ray.kill(dead)
    stats = runner.step()  # its sampling call meets the dead actor: replaced, retried, step completes
    assert runner.rollout.restarts == 1
    assert runner.rollout.workers[0]._actor_id != dead._actor_id
    assert runner.step_index == 2 and np.isfinite(stats["loss"])
    # The replacement sampled these rollouts: its logprobs equal the learner's before the update,
    # so it held the step-1 weights, not the start model's (which are `moved` nats away).
    assert abs(stats["ratio_max"] - 1.0) < 1e-3 and abs(stats["ratio_mean"] - 1.0) < 1e-4, stats


def test_kill_reward_actor_mid_run_retries_its_chunk(runner):
    import ray

    ray.kill(runner.rewards.workers[0])
    retries = runner.rewards.retries
    stats = runner.step()
    assert runner.rewards.retries == retries + 1
    assert stats["reward_failures"] == 0 and np.isfinite(stats["reward_mean"])


def test_kill_learner_rank_restores_last_checkpoint_and_finishes(runner, monkeypatch):
    import ray

    from rlreg.train.rl import train_rl

    runner.save_checkpoint()
    saved_step = runner.step_index
    saved = ray.get(runner.learner.publish_weights(), timeout=300)
    restored = {}
    recover = runner.recover_learner

    def spy(err):
        recover(err)
        restored["step"] = runner.step_index
        restored["weights"] = ray.get(runner.learner.publish_weights(), timeout=300)

    monkeypatch.setattr(runner, "recover_learner", spy)
    runner.cfg.rl.steps = saved_step + 2
    ray.kill(runner.learner.ranks[0])
    final_dir, _ = train_rl(runner)

    assert runner.learner_restarts == 1 and restored["step"] == saved_step
    assert all(np.array_equal(restored["weights"][k], saved[k]) for k in saved)
    assert runner.step_index == runner.cfg.rl.steps and (final_dir / "model.safetensors").is_file()
    logged = [json.loads(line)["step"] for line in (runner.run_dir / "rl_log.jsonl").read_text().splitlines()]
    assert logged == [saved_step + 1, saved_step + 2]  # each step once, none lost


def test_a_failed_learner_start_releases_what_it_reserved(ray_session, tmp_path):
    """A learner group whose ranks fail to start (here: no model at the path) frees its ranks and
    its placement group: a session left holding them made every later start wait for its timeout."""
    import ray
    from ray.util import placement_group_table

    from rlreg.actors.learner import LearnerGroup

    def reserved() -> set:
        return {key for key, pg in placement_group_table().items() if pg["state"] == "CREATED"}

    cfg = load_config(None, RL)
    free_before, groups_before = ray.available_resources().get("CPU", 0), reserved()
    with pytest.raises(Exception, match="no_model"):
        LearnerGroup(tmp_path / "no_model", cfg.learner, 1e-3, 1, cfg.ray)
    deadline = time.monotonic() + 30  # Ray frees a removed group's bundles asynchronously
    while ray.available_resources().get("CPU", 0) < free_before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert reserved() == groups_before
    assert ray.available_resources().get("CPU", 0) == pytest.approx(free_before)

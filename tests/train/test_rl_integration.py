"""End to end on the real stack: Ray actors, vLLM rollout engine (its engine core in its own process,
as on GPU), DeepSpeed learner ranks (W=2, gloo), reward actors (M=2), weights synced over a process
group (the GPU default route). After every weight sync the engine's logprobs equal the learner's."""
import dataclasses

import numpy as np
import pytest

from rlreg.algos.experience import LearnerBatch
from rlreg.config import load_config

pytestmark = pytest.mark.engine

RL = ["learner.world_size=2", "learner.zero_stage=2", "reward.workers=2", "rl.rollout_workers=1",
      "rl.batch_size=4", "rl.group_size=4", "rl.lr=0.003", "rl.advantage=remax", "ray.actor_start_timeout_s=600",
      # Small buckets: the tiny model's weights go in several broadcasts, as a large model's do.
      "sync.route=collective", "sync.bucket_mb=0.05"]


@pytest.fixture(scope="module")
def runner(tiny_task, tiny_cfg, ray_session, tmp_path_factory):
    from rlreg.train.rl import RLRunner

    cfg = load_config(None, [f"{k}={v}" for k, v in []] + [*RL])
    # Same task/model settings as the session fixture, RL settings from RL.
    cfg.data, cfg.numbers, cfg.model = tiny_cfg.data, tiny_cfg.numbers, tiny_cfg.model
    # The GPU default: weight syncs cross into vLLM's engine-core process (the in-process engine,
    # the CPU default, is what every other RL test runs).
    cfg.engine = dataclasses.replace(tiny_cfg.engine, process="separate")
    run_dir = tmp_path_factory.mktemp("rl_run")
    r = RLRunner(cfg, tiny_task, tiny_task.model_dir, run_dir)
    yield r
    r.shutdown()


def _engine_vs_learner(runner, tiny_task, temperature=1.0):
    prompts = tiny_task.prompts["val"][:4]
    samples = runner.rollout.sample({"prompts": prompts}, tiny_task.allowed_hf, 3, temperature)
    flat = samples.token_ids.reshape(-1, samples.token_ids.shape[-1])
    batch = LearnerBatch(prompts=[p for p in prompts for _ in range(3)],
                         tokens=np.asarray([tiny_task.codec.to_number_ids(r) for r in flat]))
    learner = np.concatenate(runner.learner.call("token_logprobs", temperature, batch=batch))
    return samples.logprobs.reshape(learner.shape), learner


def test_weights_travel_by_process_group_in_buckets(runner):
    assert runner.weights.route == "collective"
    runner.sync()
    last = runner.weights.last
    assert last["sync_buckets"] > 1 and last["sync_bytes"] > 0


def test_the_engine_core_runs_in_its_own_process(runner):
    import ray

    worker = runner.rollout.workers[0]
    children = ray.get(worker.__ray_call__.remote(lambda self: [" ".join(p.cmdline()) for p in __import__(
        "psutil").Process().children(recursive=True)]), timeout=60)
    assert any("EngineCore" in c for c in children), children


def test_engine_logprobs_equal_learner_before_training(runner, tiny_task):
    engine, learner = _engine_vs_learner(runner, tiny_task)
    assert np.abs(engine - learner).max() < 1e-3
    engine_t, learner_t = _engine_vs_learner(runner, tiny_task, temperature=0.7)
    assert np.abs(engine_t - learner_t).max() < 1e-3
    # The distributions differ between temperatures, so the check above is not vacuous.
    assert np.abs(learner_t).mean() != pytest.approx(np.abs(learner).mean(), abs=1e-4)


def test_rl_steps_change_weights_and_sync_them(runner, tiny_task):
    import ray

    previous = ray.get(runner.learner.publish_weights(), timeout=300)
    for step in range(3):
        stats = runner.step()
        assert runner.step_index == step + 1
        assert np.isfinite(stats["loss"]) and stats["invalid_rate"] == 0.0
        assert stats["reward_failures"] == 0
        current = ray.get(runner.learner.publish_weights(), timeout=300)
        changed = sum(not np.array_equal(previous[k], current[k]) for k in current)
        assert changed > len(current) // 2, f"step {step}: only {changed} tensors changed"
        previous = current
        engine, learner = _engine_vs_learner(runner, tiny_task)
        assert np.abs(engine - learner).max() < 1e-3, f"step {step}: engine and learner disagree after sync"


def test_learner_ranks_stay_identical(runner):
    import ray

    weights = ray.get([r.publish_weights.remote() for r in runner.learner.ranks], timeout=300)
    assert weights[1] is None  # only rank 0 publishes
    # Data parallel ranks must hold the same parameters: compare via logprobs of one batch per rank.
    batch = LearnerBatch(prompts=[[1, 5, 7, 4]] * 2, tokens=np.zeros((2, runner.task.number_tokenizer.length), int))
    per_rank = ray.get([r.token_logprobs.remote(batch) for r in runner.learner.ranks], timeout=300)
    assert np.array_equal(per_rank[0], per_rank[1])


def test_checkpoint_resume_restores_step_data_position_and_weights(runner, tiny_task, tiny_cfg):
    import ray

    from rlreg.train.rl import RLRunner

    runner.step()
    saved_at = runner.step_index
    runner.save_checkpoint()
    expected_weights = ray.get(runner.learner.publish_weights(), timeout=300)
    expected_cursor = runner.cursor.state()
    next_rows = runner.cursor.next()  # what the next step would train on
    runner.shutdown()  # as after a crash: the resumed run needs the CPUs the first one held

    resumed = RLRunner(runner.cfg, tiny_task, tiny_task.model_dir, runner.run_dir)
    try:
        assert resumed.restore()
        assert resumed.step_index == saved_at
        assert resumed.cursor.state() == expected_cursor
        assert np.array_equal(resumed.cursor.next(), next_rows)
        weights = ray.get(resumed.learner.publish_weights(), timeout=300)
        assert all(np.array_equal(weights[k], expected_weights[k]) for k in expected_weights)
        # restore() also pushed the restored weights into the new engine.
        engine, learner = _engine_vs_learner(resumed, tiny_task)
        assert np.abs(engine - learner).max() < 1e-3
    finally:
        resumed.shutdown()

"""Vector input end to end: the MLP encoder's soft tokens reach vLLM as prompt embeddings, and the
engine's logprobs equal the learner's (before and after a weight sync). Also: each supervised loss
variant lowers its own loss in the real DeepSpeed learner."""
from pathlib import Path

import numpy as np
import pytest

from rlreg.algos.config import SFTLossOptions
from rlreg.algos.experience import LearnerBatch
from rlreg.config import load_config

from conftest import TINY

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def vector_setup(ray_session, tmp_path_factory):
    from rlreg.actors.learner import LearnerGroup
    from rlreg.actors.rollout import RolloutGroup
    from rlreg.train.task import prepare_task

    run_dir = tmp_path_factory.mktemp("vector_run")
    cfg = load_config(None, [*TINY, "data.input=vector", "model.soft_tokens=2", "model.encoder_hidden=32",
                             f"run_dir={run_dir}"])
    task = prepare_task(cfg, Path(run_dir))
    learner = LearnerGroup(task.model_dir, cfg.learner, 3e-3, 100, cfg.ray)
    rollout = RolloutGroup(task.model_dir, cfg.engine, cfg.model.max_positions, cfg.ray)
    yield task, learner, rollout
    learner.shutdown()
    rollout.shutdown()


def _compare(task, learner, rollout):
    inputs = task.inputs("val", np.arange(5))
    samples = rollout.sample(inputs, task.allowed_hf, 3, 1.0)
    flat = samples.token_ids.reshape(-1, samples.token_ids.shape[-1])
    batch = LearnerBatch(prompts=[p for p in inputs["prompts"] for _ in range(3)],
                         features=np.repeat(inputs["features"], 3, axis=0),
                         tokens=np.asarray([task.codec.to_number_ids(r) for r in flat]))
    return samples.logprobs.reshape(-1, flat.shape[-1]), np.concatenate(learner.call("token_logprobs", batch=batch))


def test_prompts_are_placeholders_and_features_standardised(vector_setup):
    task, _, _ = vector_setup
    assert task.features["train"].shape[1] == 10  # diabetes
    assert abs(task.features["train"].mean()) < 1e-5
    assert len(set(map(tuple, task.prompts["train"]))) == 1  # the input is all in the features


def test_engine_matches_learner_with_prompt_embeddings(vector_setup):
    task, learner, rollout = vector_setup
    engine_lp, learner_lp = _compare(task, learner, rollout)
    assert np.abs(engine_lp - learner_lp).max() < 1e-3
    # Different feature vectors give different distributions: the encoder's output is used.
    assert np.std(learner_lp) > 1e-4


def _eval_loss(learner, batch: LearnerBatch, options: SFTLossOptions) -> float:
    from rlreg.actors.learner import merge_stats

    return merge_stats(learner.call("evaluate", "sft", options, batch=batch), batch.shard_sizes(learner.world_size))["loss"]


def test_each_supervised_loss_variant_trains_and_sync_keeps_parity(vector_setup):
    task, learner, rollout = vector_setup
    rows = np.arange(32)
    batch = LearnerBatch.of(task.inputs("train", rows), task.target_tokens["train"][rows])
    for loss in ("ce", "ntl_was", "dist2"):
        options = SFTLossOptions(loss=loss, ntl_weight=0.5, dist2_sigma=1.0)
        first = _eval_loss(learner, batch, options)
        for _ in range(8):
            learner.call("step", "sft", options, batch=batch)
        last = _eval_loss(learner, batch, options)
        assert last < first, f"{loss}: {first} -> {last}"
    rollout.load_weights(learner.publish_weights())
    engine_lp, learner_lp = _compare(task, learner, rollout)
    assert np.abs(engine_lp - learner_lp).max() < 1e-3


def test_learner_greedy_decode_matches_engine_greedy(vector_setup):
    task, learner, rollout = vector_setup
    inputs = task.inputs("val", np.arange(6))
    engine_ids = rollout.sample(inputs, task.allowed_hf, 1, 0.0).token_ids[:, 0]
    learner_ids = task.hf_tokens(np.concatenate(learner.call("greedy", batch=LearnerBatch.of(inputs))))
    assert np.array_equal(engine_ids, learner_ids)

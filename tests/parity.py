"""Shared by the weight-sync tests: how far the engine's logprobs of its own samples are from the
learner's logprobs of the same tokens (0 up to float noise when the engine holds the learner's weights)."""
import numpy as np

from rlreg.algos.experience import LearnerBatch


def engine_learner_gap(task, rollout, learner, rows: int = 4, samples: int = 1, temperature: float = 1.0) -> float:
    """Max |engine logp − learner logp| over `samples` draws for the first `rows` validation inputs."""
    inputs = task.inputs("val", range(rows))
    drawn = rollout.sample(inputs, task.allowed_hf, samples, temperature)
    length = drawn.token_ids.shape[-1]
    number_ids = np.asarray([task.codec.to_number_ids(r) for r in drawn.token_ids.reshape(-1, length)])
    batch = LearnerBatch.of_rollouts(inputs, number_ids.reshape(rows, samples, length))
    learner_logp = np.concatenate(learner.call("token_logprobs", temperature, batch=batch))
    return float(np.abs(drawn.logprobs.reshape(learner_logp.shape) - learner_logp).max())

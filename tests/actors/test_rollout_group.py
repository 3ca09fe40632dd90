"""A rollout group of two engines: a batch is shared between them, and their samplers differ."""
from __future__ import annotations

import numpy as np
import pytest

from rlreg.actors.rollout import chunk_size


@pytest.mark.parametrize("rows, workers, largest, expected", [
    (4, 2, 256, 2),      # a small batch still reaches both engines
    (5, 2, 256, 3),      # the first engine takes the odd row
    (1000, 2, 256, 256),  # no call larger than the limit
    (3, 8, 256, 1),      # more engines than rows: one row each
    (0, 2, 256, 1),
])
def test_chunk_size_shares_a_batch_between_engines(rows, workers, largest, expected):
    assert chunk_size(rows, workers, largest) == expected


@pytest.mark.engine
def test_two_engines_draw_different_samples_for_the_same_prompt(tiny_task, tiny_cfg, ray_session):
    from rlreg.actors.config import RayConfig
    from rlreg.actors.rollout import RolloutGroup

    ray_cfg = RayConfig(rollout_cpus=0.5, torch_threads=1, actor_start_timeout_s=300, call_timeout_s=120)
    group = RolloutGroup(tiny_task.model_dir, tiny_cfg.engine, tiny_cfg.model.max_positions, ray_cfg, workers=2)
    try:
        prompt = tiny_task.prompts["val"][0]
        # Rows 0-1 go to engine 0, rows 2-3 to engine 1, each as its first request: with one seed for
        # both engines, row 0 and row 2 would be the same draws.
        samples = group.sample({"prompts": [prompt] * 4}, tiny_task.allowed_hf, 8, 1.0)
    finally:
        group.shutdown()
    tokens = samples.token_ids
    assert tokens.shape[:2] == (4, 8)
    assert not np.array_equal(tokens[0], tokens[2]) and not np.array_equal(tokens[1], tokens[3])

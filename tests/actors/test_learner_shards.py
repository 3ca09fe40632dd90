"""Learner shards, their loss weights and micro-batch passes (rlreg.algos.experience.LearnerBatch.
shards / micro_batches): the pure logic first, then real DeepSpeed ranks under Ray (gloo) that must
make the same optimizer step at any world size and micro-batch size as one rank on the whole batch."""
import numpy as np
import pytest
import torch

from rlreg.algos.experience import LearnerBatch, merge_stats
from rlreg.algos.losses import rl_loss
from rlreg.config import load_config

OPTIONS = load_config(None, ["rl.entropy_coef=0.01"]).rl.loss_options()
L, V, F = 3, 4, 5


def _batch(n: int, seed: int = 0) -> LearnerBatch:
    rng = np.random.default_rng(seed)
    # Two rows per prompt, as rollouts come (the G samples of one input together).
    return LearnerBatch(prompts=[[i // 2] for i in range(n)], tokens=rng.integers(0, V, (n, L)),
                        features=rng.normal(size=(n, F)).astype(np.float32),
                        old_logp=np.full((n, L), -1.0, dtype=np.float32), advantages=rng.normal(size=n))


def _loss(theta: torch.Tensor, batch: LearnerBatch) -> torch.Tensor:
    """The RL objective of a linear "policy" (features → logits [L, V]) on the batch's rows."""
    logits = torch.einsum("nf,flv->nlv", torch.as_tensor(batch.features), theta)
    logp_full = torch.log_softmax(logits, -1)
    logp = logp_full.gather(-1, torch.as_tensor(batch.tokens).unsqueeze(-1)).squeeze(-1)
    return rl_loss(logp, logp_full, batch, OPTIONS)[0]


def _ranks_gradient(batch: LearnerBatch, world_size: int, micro_batch_size: int) -> tuple[torch.Tensor, list[int]]:
    """What W ranks compute: each backward of loss × loss_scale per pass, gradients summed over
    passes, then averaged with equal weights over ranks (DeepSpeed's reduction)."""
    theta = torch.zeros(F, L, V, requires_grad=True)
    with torch.no_grad():
        theta.copy_(torch.randn(F, L, V, generator=torch.Generator().manual_seed(1)))
    passes = []
    for shard in batch.shards(world_size, micro_batch_size):
        parts = shard.micro_batches()
        passes.append(len(parts))
        for part in parts:
            (_loss(theta, part.batch) * part.loss_scale / world_size).backward()
    return theta.grad.clone(), passes


@pytest.mark.parametrize("rows,world_size,micro_batch_size", [
    (1, 2, 0), (1, 3, 1), (3, 2, 0), (5, 2, 0), (5, 3, 2), (7, 2, 1), (8, 4, 3), (6, 1, 4)])
def test_ranks_and_passes_give_the_whole_batch_gradient(rows, world_size, micro_batch_size):
    batch = _batch(rows)
    whole, _ = _ranks_gradient(batch, 1, 0)
    split, passes = _ranks_gradient(batch, world_size, micro_batch_size)
    assert whole.abs().max() > 1e-3  # a gradient that could differ
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-7)
    assert len(set(passes)) == 1  # every rank makes the same number of passes (collectives match)


def test_per_rank_means_would_mis_weight_uneven_shards():
    """Why loss_scale exists: equal averaging of per-shard means (2 rows and 3 rows) is not the
    whole batch's mean gradient."""
    batch = _batch(5)
    whole, _ = _ranks_gradient(batch, 1, 0)
    theta = torch.randn(F, L, V, generator=torch.Generator().manual_seed(1)).requires_grad_()
    for shard in batch.shards(2):
        (_loss(theta, shard) / 2).backward()
    assert (theta.grad - whole).abs().max() > 1e-4


def test_a_rank_without_rows_gets_a_zero_weight_stand_in():
    batch = _batch(1)
    empty, full = batch.shards(2)
    assert len(empty) == 0 and batch.shard_sizes(2) == [0, 1]  # the shard itself stays empty
    assert empty.runnable().prompts == batch.prompts and empty.runnable().stand_in is None
    np.testing.assert_array_equal(empty.runnable().tokens, batch.tokens)
    (part,) = empty.micro_batches()
    assert part.loss_scale == 0.0 and part.rows == 0 and len(part.batch) == 1
    assert full.loss_scale == 2.0 and full.stand_in is None and full.runnable() is full
    assert LearnerBatch(prompts=[]).shards(2)[0].stand_in is None  # nothing to stand in with
    with pytest.raises(ValueError, match="empty batch"):
        LearnerBatch(prompts=[]).shards(2)[0].micro_batches()


def test_micro_batches_are_padded_to_the_most_passes_of_any_rank():
    batch = _batch(5)
    small, large = batch.shards(2, micro_batch_size=2)  # 2 rows, 3 rows
    assert small.passes == large.passes == 2
    assert [(len(p.batch), p.rows) for p in small.micro_batches()] == [(2, 2), (1, 0)]  # padded
    assert [(len(p.batch), p.rows) for p in large.micro_batches()] == [(2, 2), (1, 1)]
    small, large = batch.shards(2, micro_batch_size=1)
    parts = small.micro_batches()
    assert [p.rows for p in parts] == [1, 1, 0] and parts[-1].loss_scale == 0.0
    assert sum(p.loss_scale for p in parts) == pytest.approx(small.loss_scale) == pytest.approx(2 * 2 / 5)
    assert [p for part in large.micro_batches() for p in part.batch.prompts] == batch.prompts[2:]
    with pytest.raises(ValueError, match="same micro_batch_size"):
        LearnerBatch(**{**large.__dict__, "passes": 1}).micro_batches()


def test_merge_stats_weighs_rows_and_ignores_stand_ins():
    merged = merge_stats([{"loss": 1.0, "ratio_max": 1.5, "lr": 0.1}, {"loss": 3.0, "ratio_max": 1.2, "lr": 0.1},
                          {"loss": float("nan"), "ratio_max": 9.0, "lr": 0.1}], [1, 3, 0])
    assert merged == {"loss": pytest.approx(2.5), "ratio_max": 1.5, "lr": pytest.approx(0.1)}
    assert merge_stats([{"loss": 1.0, "note": "x"}], [2]) == {"loss": 1.0}


# -- real DeepSpeed ranks under Ray ---------------------------------------------------------------
RL = ["ray.torch_threads=1", "ray.learner_cpus=0.5", "ray.actor_start_timeout_s=600", "ray.call_timeout_s=300",
      "learner.warmup_fraction=0", "learner.grad_clip=100"]
LR = 1e-3


def _rl_batch(task, rows: int, seed: int) -> LearnerBatch:
    rng = np.random.default_rng(seed)
    prompts = task.prompts["train"][:(rows + 1) // 2]
    tokens = np.asarray(task.target_tokens["train"][:rows])
    return LearnerBatch(prompts=[p for p in prompts for _ in range(2)][:rows], tokens=tokens,
                        advantages=rng.normal(size=rows))


def _steps(task, overrides: list[str]) -> list[tuple[dict, dict]]:
    """Two optimizer steps from the start model: on ONE row (fewer rows than 2 ranks), then on 3
    rows (uneven shards 1 + 2); (merged stats, weights) after each."""
    import ray

    from rlreg.actors.learner import LearnerGroup

    cfg = load_config(None, RL + overrides)
    group = LearnerGroup(task.model_dir, cfg.learner, LR, 10, cfg.ray)
    try:
        out = []
        for batch in (_rl_batch(task, 1, 0), _rl_batch(task, 3, 1)):
            results = group.call("step", "rl", OPTIONS, batch=batch)
            stats = merge_stats(results, batch.shard_sizes(group.world_size))
            out.append((stats, ray.get(group.publish_weights(), timeout=300)))
        return out
    finally:
        group.shutdown()


@pytest.fixture(scope="module")
def one_rank_whole(tiny_task, ray_session):
    return _steps(tiny_task, ["learner.world_size=1"])


@pytest.mark.engine
@pytest.mark.parametrize("overrides", [
    ["learner.world_size=2"],
    ["learner.world_size=2", "learner.zero_stage=3", "learner.micro_batch_size=1"],
    ["learner.world_size=1", "learner.micro_batch_size=1", "learner.gradient_checkpointing=true",
     "learner.shared_prefix=false"],
    ["learner.world_size=2", "learner.zero_stage=2", "learner.micro_batch_size=2",
     "learner.gradient_checkpointing=true", "learner.shared_prefix=false"],
], ids=["2ranks", "2ranks-zero3-micro1", "1rank-micro1-checkpointing", "2ranks-zero2-micro2-checkpointing"])
def test_step_equals_one_rank_on_the_whole_batch(tiny_task, ray_session, one_rank_whole, overrides):
    """World size 2 on a one-row batch (one rank has no rows) and on uneven shards, ZeRO-3 with
    padded micro-batch passes, micro-batches with gradient checkpointing: the same gradient (its
    norm) and the same updated weights as one rank taking the whole batch in one pass."""
    start = None
    for (want_stats, want), (got_stats, got) in zip(one_rank_whole, _steps(tiny_task, overrides)):
        assert got_stats["loss"] == pytest.approx(want_stats["loss"], rel=1e-5)
        assert got_stats["grad_norm"] == pytest.approx(want_stats["grad_norm"], rel=1e-4)
        assert set(got) == set(want)
        worst = max(float(np.abs(got[k] - want[k]).max()) for k in want)
        assert worst < 1e-5, f"weights differ by {worst:g}"
        if start is None:
            start = want
        else:  # the steps moved the weights by about lr: equality above could have failed
            assert max(float(np.abs(want[k] - start[k]).max()) for k in want) > LR / 2

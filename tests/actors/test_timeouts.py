"""Time limits. Every remote wait in rlreg goes through get_with_timeout (audited over the source);
a rollout engine that stops answering is killed and replaced (holding the current weights) and the
call retried once, and a second hang stops with a clear error, each within its bound; a reward
function that hangs is cut off and counted; a hung learner rank becomes LearnerLost, which the RL
loop restores from (tests/actors/test_faults.py)."""
from __future__ import annotations

import ast
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

RLREG = REPO / "rlreg"
# Long enough for a replacement engine's first call on a loaded 2-core machine (CI saw > 10 s at load 30).
CALL_TIMEOUT_S = 30.0


def test_timeout_every_remote_wait_in_rlreg_is_time_limited():
    """ray.get / ray.wait only inside session.py (get_with_timeout), always with a timeout; no
    future or thread is waited on without one."""
    offenders = []
    for path in sorted(RLREG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            keywords = {k.arg for k in node.keywords}
            where = f"{path.relative_to(RLREG.parent)}:{node.lineno}"
            if owner == "ray" and node.func.attr in ("get", "wait"):
                if path.name != "session.py" or "timeout" not in keywords:
                    offenders.append(f"{where}: ray.{node.func.attr} outside get_with_timeout")
            elif node.func.attr in ("result", "join") and not node.args and "timeout" not in keywords:
                offenders.append(f"{where}: .{node.func.attr}() without a timeout")
    assert not offenders, "\n".join(offenders)


@pytest.fixture(scope="module")
def group(tiny_task, tiny_cfg, ray_session):
    from rlreg.actors.rollout import RolloutGroup
    from rlreg.actors.config import RayConfig

    ray_cfg = RayConfig(call_timeout_s=CALL_TIMEOUT_S, actor_start_timeout_s=300, torch_threads=1, max_restarts=1)
    g = RolloutGroup(tiny_task.model_dir, tiny_cfg.engine, tiny_cfg.model.max_positions, ray_cfg)
    yield g
    g.shutdown()


def _greedy_logprobs(group, task) -> np.ndarray:
    return group.sample(task.inputs("val", range(4)), task.allowed_hf, 1, 0.0).logprobs


@pytest.mark.engine
def test_timeout_hung_rollout_worker_is_replaced_with_current_weights(group, tiny_task):
    import ray
    from safetensors.numpy import load_file

    from rlreg.actors.session import ActorFailed

    start = _greedy_logprobs(group, tiny_task)
    weights = load_file(str(tiny_task.model_dir / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] * 2.0  # sharper logits: other logprobs
    group.load_weights(ray.put(weights))
    current = _greedy_logprobs(group, tiny_task)
    assert np.abs(current - start).max() > 1e-2

    hung = group.workers[0]
    hung.debug_sleep.remote(600)  # the actor runs one call at a time: the next call waits behind this
    t0 = time.monotonic()
    after = _greedy_logprobs(group, tiny_task)
    took = time.monotonic() - t0
    assert group.restarts == 1 and group.workers[0]._actor_id != hung._actor_id
    assert CALL_TIMEOUT_S <= took < CALL_TIMEOUT_S + 120, f"hung call took {took:.0f} s"
    np.testing.assert_allclose(after, current, atol=1e-5)  # the replacement loaded the current weights

    # ray.max_restarts=1 is used up: the next hang stops with an error naming the limit, in bound.
    group.workers[0].debug_sleep.remote(600)
    t0 = time.monotonic()
    with pytest.raises(ActorFailed, match=rf"did not answer within ray.call_timeout_s={CALL_TIMEOUT_S:g} s.*ray.max_restarts=1"):
        _greedy_logprobs(group, tiny_task)
    assert time.monotonic() - t0 < CALL_TIMEOUT_S + 10


@pytest.mark.engine
def test_timeout_hanging_reward_function_is_cut_off_and_counted(ray_session, tmp_path):
    from rlreg.actors.config import RewardConfig
    from rlreg.actors.reward import RewardPool
    from rlreg.actors.config import RayConfig
    from rlreg.numbers.normalized import NormalizedDigits
    from rlreg.numbers.scalers import build_scaler

    path = tmp_path / "slow_reward.py"
    path.write_text(textwrap.dedent("""
        import time
        def hangs(pred, target, **columns):
            time.sleep(60)
    """))
    tok = NormalizedDigits(base=2, length=6)
    scaler = build_scaler("zscore_minmax").fit(np.linspace(0.0, 10.0, 50))
    targets = np.array([1.0, 4.0, 7.5, 9.0])
    ids = np.asarray([tok.encode_ids(float(v)) for v in scaler.transform(targets)])
    cfg = RewardConfig(fn=f"{path}:hangs", workers=1, timeout_s=1.0, failure_penalty=-3.0)
    pool = RewardPool(tok.describe(), scaler.state_dict(), cfg, RayConfig(call_timeout_s=30))
    try:
        t0 = time.monotonic()
        out = pool.score(ids, targets)
        took = time.monotonic() - t0
    finally:
        pool.shutdown()
    assert took < 10, f"a 1 s reward timeout took {took:.1f} s"
    assert out["failed"].all() and (out["rewards"] == -3.0).all()
    assert any("did not return within reward.timeout_s=1.0" in e for e in out["errors"]), out["errors"]


@pytest.mark.engine
def test_timeout_hung_learner_rank_becomes_learner_lost(ray_session):
    import ray

    from rlreg.actors.learner import LearnerGroup, LearnerLost
    from rlreg.actors.config import RayConfig

    @ray.remote(num_cpus=0)
    def hung_rank() -> None:
        time.sleep(60)

    group = object.__new__(LearnerGroup)  # only its wait: no DeepSpeed ranks needed
    group.ray_cfg = RayConfig(call_timeout_s=1.0)
    ref = hung_rank.remote()
    t0 = time.monotonic()
    try:
        with pytest.raises(LearnerLost, match="learner rl step did not answer within 1 s.*hung"):
            group.wait([ref], "learner rl step")
    finally:
        ray.cancel(ref, force=True)
    assert time.monotonic() - t0 < 5

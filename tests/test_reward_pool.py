"""The reward pool on real Ray actors: user reward functions by import path; functions that raise,
return NaN, return the wrong shape or hang are cut off, counted and reported; invalid sequences get
the penalty; a killed reward actor's chunk is retried on a replacement."""
import textwrap

import numpy as np
import pytest

from rlreg.actors.reward import RewardConfig, RewardPool
from rlreg.actors.session import RayConfig
from rlreg.numbers.normalized import NormalizedDigits
from rlreg.numbers.scalers import build_scaler

pytestmark = pytest.mark.engine

USER_REWARDS = textwrap.dedent("""
    import time
    import numpy as np

    def half_error(pred, target, **columns):
        return -0.5 * np.abs(pred - target)

    def raises(pred, target, **columns):
        raise RuntimeError("boom")

    def some_nan(pred, target, **columns):
        out = -np.abs(pred - target)
        out[::2] = np.nan
        return out

    def wrong_shape(pred, target, **columns):
        return np.zeros(len(pred) + 1)

    def hangs(pred, target, **columns):
        time.sleep(30)
        return -np.abs(pred - target)
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "user_rewards.py"
    path.write_text(USER_REWARDS)
    tok = NormalizedDigits(base=2, length=6)
    y_train = np.linspace(0.0, 10.0, 50)
    scaler = build_scaler("zscore_minmax").fit(y_train)
    targets = np.array([1.0, 4.0, 7.5, 9.0])
    ids = np.asarray([tok.encode_ids(float(v)) for v in scaler.transform(targets)])
    return path, tok, scaler, targets, ids


def make_pool(setup, fn, **kw):
    path, tok, scaler, _, _ = setup
    cfg = RewardConfig(fn=f"{path}:{fn}" if fn not in ("neg_mse",) else fn, workers=2, timeout_s=2.0, **kw)
    return RewardPool(tok.describe(), scaler.state_dict(), cfg, RayConfig(call_timeout_s=60))


def test_neg_mse_in_z_space_and_invalid_penalty(ray_session, setup):
    _, tok, scaler, targets, ids = setup
    pool = make_pool(setup, "neg_mse", invalid_penalty=-7.0)
    try:
        bad = ids.copy()
        bad[1, 0] = 99  # not a token: invalid sequence
        out = pool.score(bad, targets)
    finally:
        pool.shutdown()
    assert out["valid"].tolist() == [True, False, True, True]
    assert out["rewards"][1] == -7.0
    z_pred = scaler.to_z(out["pred"][[0, 2, 3]])
    expected = -(z_pred - scaler.to_z(targets[[0, 2, 3]])) ** 2
    np.testing.assert_allclose(out["rewards"][[0, 2, 3]], expected, rtol=1e-9)
    assert (out["rewards"][[0, 2, 3]] > -0.01).all()  # encodings are close to the targets
    assert out["failed"].sum() == 0 and out["errors"] == []


def test_user_function_by_file_path_in_original_units(ray_session, setup):
    _, _, _, targets, ids = setup
    pool = make_pool(setup, "half_error", space="original")
    try:
        out = pool.score(ids, targets)
    finally:
        pool.shutdown()
    np.testing.assert_allclose(out["rewards"], -0.5 * np.abs(out["pred"] - targets))


@pytest.mark.parametrize("fn, failed, message", [
    ("raises", 4, "raised RuntimeError: boom"),
    ("some_nan", 2, None),
    ("wrong_shape", 4, "returned shape"),
    ("hangs", 4, "did not return within reward.timeout_s"),
])
def test_reward_failures_are_counted_and_reported(ray_session, setup, fn, failed, message):
    _, _, _, targets, ids = setup
    pool = make_pool(setup, fn, failure_penalty=-3.0)
    try:
        out = pool.score(ids, targets)
    finally:
        pool.shutdown()
    assert int(out["failed"].sum()) == failed
    assert (out["rewards"][out["failed"]] == -3.0).all()
    assert np.isfinite(out["rewards"]).all()
    if message:
        assert any(message in e for e in out["errors"]), out["errors"]


def test_killed_reward_actor_is_replaced_and_its_chunk_retried(ray_session, setup):
    import ray

    _, _, _, targets, ids = setup
    pool = make_pool(setup, "neg_mse")
    try:
        ray.kill(pool.workers[0])
        out = pool.score(ids, targets)
    finally:
        pool.shutdown()
    assert pool.retries >= 1
    assert out["valid"].all() and np.isfinite(out["rewards"]).all()

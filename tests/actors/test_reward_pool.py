"""The reward pool on real Ray actors: user reward functions by import path; functions that raise,
return NaN, return the wrong shape or hang are cut off, counted and reported; invalid sequences get
the penalty; a killed reward actor's chunk is retried on a replacement."""
import numpy as np
import pytest

from rlreg.actors.config import RewardConfig
from rlreg.actors.reward import RewardPool
from rlreg.actors.config import RayConfig

from reward_cases import reward_case

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return reward_case(tmp_path_factory.mktemp("rewards"))


def make_pool(setup, fn, columns=(), **kw):
    path, tok, scaler, _, _ = setup
    cfg = RewardConfig(fn=f"{path}:{fn}" if fn not in ("neg_mse",) else fn, workers=2, timeout_s=2.0, **kw)
    return RewardPool(tok.describe(), scaler.state_dict(), cfg, RayConfig(call_timeout_s=60), list(columns))


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


def test_custom_reward_receives_the_columns_it_names_masked_to_valid_samples(ray_session, setup):
    """TRL-style contract: the row's data columns reach a custom reward as keywords, row-aligned
    with pred/target over the valid samples only; columns it does not name are not sent."""
    from rlreg.actors.reward import accepted_columns
    from rlreg.algos.rewards import load_reward

    path, _, _, targets, ids = setup
    assert accepted_columns(load_reward(f"{path}:by_weight"), f"{path}:by_weight", ["weight", "age"]) == ["weight"]
    assert accepted_columns(load_reward(f"{path}:half_error"), f"{path}:half_error", ["weight", "age"]) == \
        ["weight", "age"]  # **columns: all of them
    assert accepted_columns(load_reward("neg_mse"), "neg_mse", ["weight"]) == []  # the registry's own: none
    pool = make_pool(setup, "by_weight", columns=["weight", "age"], space="original", invalid_penalty=-7.0)
    try:
        bad = ids.copy()
        bad[1, 0] = 99  # invalid: its weight must not reach the function
        weight = np.array([1.0, 100.0, 2.0, 3.0])
        out = pool.score(bad, targets, {"weight": weight, "age": np.array(["a", "b", "c", "d"], dtype=object)})
    finally:
        pool.shutdown()
    assert pool.columns == ["weight"]
    assert out["rewards"][1] == -7.0 and out["failed"].sum() == 0
    keep = [0, 2, 3]
    np.testing.assert_allclose(out["rewards"][keep], -np.abs(out["pred"][keep] - targets[keep]) * weight[keep])


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


class _DiesOnStart:
    """Stands in for the pool's actor class: every replacement it starts is killed at once."""

    def __init__(self, cls):
        self.cls = cls

    def remote(self, *args):
        import ray

        actor = self.cls.remote(*args)
        ray.kill(actor)
        return actor


def test_reward_chunk_failing_again_on_its_replacement_is_actor_failed(ray_session, setup):
    import ray

    from rlreg.actors.session import ActorFailed

    _, _, _, targets, ids = setup
    pool = make_pool(setup, "neg_mse")
    try:
        for worker in pool.workers:
            ray.kill(worker)
        pool._cls = _DiesOnStart(pool._cls)
        with pytest.raises(ActorFailed, match=r"reward pool: chunk 0 \(rows 0-1\) failed on reward actor 0 "
                                              r"\(\w*ActorDiedError.*\) and again on its replacement"):
            pool.score(ids, targets)
    finally:
        pool.shutdown()
    assert pool.retries == 1


def test_invalid_overflowing_value_gets_the_penalty_not_a_mean_like_reward():
    """IEEE tokens on signed_log-scaled targets can write 9e8, whose original value exp(9e8) is inf.
    Such a sample is invalid (penalty, counted) — before, it was scored as if it predicted the mean."""
    from rlreg.actors.reward import RewardWorker
    from rlreg.numbers.registry import build_number_tokenizer
    from rlreg.numbers.scalers import build_scaler

    tok = build_number_tokenizer({"tokenizer": "ieee", "base": 10, "mantissa_digits": 3, "exponent_digits": 1})
    scaler = build_scaler("signed_log").fit(np.array([1.0, 10.0, 1e3, 1e5]))
    targets = np.array([100.0, 100.0])
    ids = np.asarray([tok.encode_ids(float(scaler.transform(np.array([100.0]))[0])), tok.encode_ids(9.0e8)])
    worker = RewardWorker(tok.describe(), scaler.state_dict(), RewardConfig(invalid_penalty=-10.0))
    out = worker.score(ids, targets)
    assert out["valid"].tolist() == [True, False]
    assert out["rewards"][1] == -10.0 and out["rewards"][0] > -1e-3  # the other: near-exact (3 mantissa digits)
    assert np.isnan(out["pred"][1]) or not np.isfinite(out["pred"][1])

"""Split-conformal calibration of the sample intervals (rlreg.evaluate.calibration): pure NumPy,
no engine. The synthetic task has a known conditional distribution y | x ~ N(mu(x), sigma(x)^2); the
"model" samples from N(mu(x), (c * sigma(x))^2), too narrow (c < 1) or too wide (c > 1)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rlreg.errors import ConfigError
from rlreg.evaluate.aggregate import sample_interval
from rlreg.evaluate.calibration import (MAX_STORED, Calibration, check_alpha, check_alphas, fit_calibration,
                                        interval_report)
from rlreg.evaluate.metrics import coverage

K = 64


def synthetic(n: int, scale: float, seed: int, invalid: float = 0.0):
    """(samples [n, K], valid [n, K], y [n]) with heteroscedastic noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, n)
    mu, sigma = 3 * np.sin(x) + x, 0.2 + 0.5 * np.abs(x)
    y = mu + sigma * rng.standard_normal(n)
    samples = mu[:, None] + scale * sigma[:, None] * rng.standard_normal((n, K))
    valid = rng.random((n, K)) >= invalid
    return samples, valid, y


@pytest.mark.parametrize("scale,raw_range", [(0.4, (0.40, 0.58)), (2.5, (0.99, 1.0))], ids=["too-narrow", "too-wide"])
@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.05])
def test_calibrated_coverage_is_nominal_and_raw_is_reported_as_it_is(scale, raw_range, alpha):
    val = synthetic(2000, scale, seed=1, invalid=0.05)
    test = synthetic(5000, scale, seed=2, invalid=0.05)
    cal = fit_calibration(*val, "mean")
    report = interval_report(*test, cal, [alpha])[f"{alpha:g}"]
    assert abs(report["calibrated"]["coverage"] - (1 - alpha)) <= 0.05
    # the raw interval is reported exactly as sample_interval gives it, however wrong it is
    lo, hi = sample_interval(test[0], test[1], alpha)
    assert report["raw"]["coverage"] == pytest.approx(coverage(lo, hi, test[2]))
    assert report["raw"]["width"] == pytest.approx(float(np.mean(hi - lo)))
    if alpha == 0.1:
        assert raw_range[0] <= report["raw"]["coverage"] <= raw_range[1]
    # the fix goes the right way: wider than a too-narrow sampler, narrower than a too-wide one
    if scale < 1:
        assert report["calibrated"]["width"] > report["raw"]["width"]
    else:
        assert report["calibrated"]["width"] < report["raw"]["width"]


def test_calibrated_width_is_near_the_oracle():
    """With the right shape of spread, the calibrated 90 % interval is about the oracle's 2·1.645·σ."""
    val, test = synthetic(3000, 0.4, seed=3), synthetic(3000, 0.4, seed=4)
    cal = fit_calibration(*val, "median")
    lo, hi = cal.interval(*test[:2], 0.1)
    rng = np.random.default_rng(4)
    x = rng.uniform(-2, 2, 3000)
    oracle = 2 * 1.645 * (0.2 + 0.5 * np.abs(x))
    assert np.mean(hi - lo) == pytest.approx(oracle.mean(), rel=0.1)


def test_a_sampler_collapsed_on_rows_it_gets_wrong_keeps_a_useful_width():
    """A sharpened sampler writes one number K times (σ̂ = 0) on some rows it still gets wrong. The
    offset β keeps those rows from setting q; without it (offsets=(0,)) the interval is useless."""
    def collapsed(n: int, seed: int):
        samples, valid, y = synthetic(n, 0.4, seed)
        rows = np.random.default_rng(seed + 100).random(n) < 0.3
        samples[rows] = samples[rows, :1]
        return samples, valid, y

    val, test = collapsed(2000, 8), collapsed(5000, 9)
    x = np.random.default_rng(9).uniform(-2, 2, 5000)  # synthetic()'s inputs for seed 9
    oracle = 2 * 1.645 * np.mean(0.2 + 0.5 * np.abs(x))
    cal = fit_calibration(*val, "mean")
    got = interval_report(*test, cal)["0.1"]["calibrated"]
    assert cal.offset > 0 and abs(got["coverage"] - 0.9) <= 0.05
    assert got["width"] < 1.5 * oracle
    spread_only = interval_report(*test, fit_calibration(*val, "mean", offsets=(0.0,)))["0.1"]["calibrated"]
    assert spread_only["width"] > 50 * oracle  # what the offset prevents
    with pytest.raises(ValueError, match="offsets"):
        fit_calibration(*val, "mean", offsets=())


def test_collapsed_rows_and_rows_without_samples():
    samples, valid, y = synthetic(400, 1.0, seed=5)
    samples[:50] = samples[:50, :1]  # every sample equal: no spread
    valid[50:60] = False  # nothing decoded
    cal = fit_calibration(samples, valid, y, "mean")
    assert cal.n == 390 and cal.floor > 0 and np.isfinite(cal.scores).all()
    lo, hi = cal.interval(samples, valid, 0.1)
    assert np.isnan(lo[50:60]).all() and np.isnan(hi[50:60]).all()
    assert np.isfinite(lo[:50]).all() and (hi[:50] >= lo[:50]).all()
    report = interval_report(samples, valid, y, cal)["0.1"]
    assert report["raw"]["n"] == report["calibrated"]["n"] == 390


def test_every_sample_collapsed_falls_back_to_the_target_scale():
    y = np.linspace(0, 10, 100)
    samples = np.repeat(y[:, None] + 1.0, 4, axis=1)
    cal = fit_calibration(samples, None, y, "mean")
    assert cal.floor == pytest.approx(1e-3 * np.std(y))


def test_round_trip_through_json_and_thinning():
    cal = fit_calibration(*synthetic(MAX_STORED + 1500, 0.5, seed=6), "mean")
    assert cal.n == MAX_STORED + 1500 and len(cal.scores) == MAX_STORED
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    for alpha in (0.1, 0.3):
        assert again.quantile(alpha) == pytest.approx(cal.quantile(alpha), rel=1e-5)
    full = np.sort(np.asarray(cal.scores))
    assert cal.quantile(0.5) == pytest.approx(np.quantile(full, 0.5), rel=0.01)
    # a calibration stored before the offset existed keeps its meaning: no offset
    older = {k: v for k, v in cal.to_dict().items() if k != "offset"}
    assert again.offset == cal.offset and Calibration.from_dict(older).offset == 0.0


def test_too_few_rows_for_alpha_gives_an_infinite_interval():
    cal = fit_calibration(*synthetic(9, 1.0, seed=7), "mean")
    assert cal.quantile(0.05) == np.inf  # needs n >= 19
    assert np.isfinite(cal.quantile(0.2))


@pytest.mark.parametrize("alpha", [0, 1, 1.5, -0.1, float("nan"), "0.1", None, True])
def test_bad_alpha_is_a_clear_error(alpha):
    cal = fit_calibration(*synthetic(50, 1.0, seed=8), "mean")
    with pytest.raises(ConfigError, match="alpha"):
        cal.quantile(alpha)
    with pytest.raises(ConfigError, match="--alpha"):
        check_alphas([alpha], "--alpha")
    with pytest.raises(ConfigError, match="alpha"):
        interval_report(*synthetic(10, 1.0, seed=9), cal, [alpha])


def test_check_alphas_keeps_the_default_first():
    assert check_alphas(None) == [0.1]
    assert check_alphas([0.2, 0.1, 0.2]) == [0.1, 0.2]
    assert check_alpha(0.05) == 0.05


@pytest.mark.parametrize("change,key", [
    ({"scores": []}, "scores"), ({"scores": [1.0, float("inf")]}, "scores"), ({"n": 1}, "n"),
    ({"aggregation": "mode"}, "aggregation"), ({"floor": 0}, "floor"), ({"floor": None}, "floor"),
    ({"offset": -1.0}, "offset"), ({"offset": float("inf")}, "offset")])
def test_bad_stored_calibration_names_the_key(change, key):
    good = fit_calibration(*synthetic(20, 1.0, seed=10), "mean").to_dict()
    with pytest.raises(ConfigError, match=f"task.json: calibration.{key}"):
        Calibration.from_dict({**good, **change}, "task.json: calibration")
    missing = {k: v for k, v in good.items() if k != "floor"}
    with pytest.raises(ConfigError, match="missing key.*floor"):
        Calibration.from_dict(missing)


def test_no_valid_row_cannot_calibrate():
    samples, valid, y = synthetic(10, 1.0, seed=11)
    with pytest.raises(ValueError, match="no validation row"):
        fit_calibration(samples, np.zeros_like(valid), y, "mean")


def test_sampling_helpers_use_the_calibration():
    """What rlreg predict writes: lower/upper from the calibration when there is one."""
    from rlreg.evaluate.sampling import calibrate, summarise

    samples, valid, y = synthetic(300, 0.4, seed=12)
    assert calibrate(samples, np.zeros_like(valid), y, "mean") is None  # nothing decoded: no calibration
    cal = calibrate(samples, valid, y, "mean")
    raw, fixed = summarise(samples, valid, "median", 0.1), summarise(samples, valid, "median", 0.1, cal)
    np.testing.assert_array_equal(raw["prediction"], fixed["prediction"])
    lo, hi = cal.interval(samples, valid, 0.1)
    np.testing.assert_allclose(fixed["lower"], lo)
    np.testing.assert_allclose(fixed["upper"], hi)
    assert np.mean(fixed["upper"] - fixed["lower"]) > np.mean(raw["upper"] - raw["lower"])

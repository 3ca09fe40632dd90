"""Target scalers: exact inverses, clipping counts, train-only fitting, state dicts, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlreg.errors import ConfigError, DataError
from rlreg.numbers import (
    SCALERS,
    NormalizedDigits,
    Quantile,
    SignedLog,
    ZScoreMinMax,
    build_scaler,
    scaler_from_state_dict,
)

FAST = settings(max_examples=50, deadline=None)
RNG = np.random.default_rng(0)
TRAIN = RNG.lognormal(mean=2.0, sigma=1.5, size=300) - 3.0  # skewed, with negatives
UNIT_SCALERS = ["zscore_minmax", "quantile", "signed_log"]  # map the train range onto [0, 1]


def fitted(name: str, margin: float = 0.0):
    return build_scaler(name, margin=margin).fit(TRAIN)


def test_registry_has_all_scalers() -> None:
    assert set(SCALERS) == {"zscore_minmax", "quantile", "signed_log", "identity"}
    with pytest.raises(ConfigError, match="numbers.scaler must be one of"):
        build_scaler("minmax")
    for margin in (-0.1, 0.5, "0.1", True, math.nan):
        with pytest.raises(ConfigError, match="numbers.scaler_margin"):
            build_scaler("zscore_minmax", margin=margin)
    with pytest.raises(ConfigError, match="identity"):
        build_scaler("identity", margin=0.1)


@pytest.mark.parametrize("name", list(SCALERS))
def test_exact_inverse_on_train_range(name: str) -> None:
    scaler = fitted(name)

    @FAST
    @given(st.floats(float(TRAIN.min()), float(TRAIN.max())))
    def check(y: float) -> None:
        u = scaler.transform(np.array([y]))
        assert scaler.last_clipped == 0
        back = scaler.inverse_transform(u)[0]
        assert back == pytest.approx(y, rel=1e-9, abs=1e-9)
        assert scaler.from_z(scaler.to_z(y)) == pytest.approx(y, rel=1e-9, abs=1e-9)

    check()
    back = scaler.inverse_transform(scaler.transform(TRAIN))
    np.testing.assert_allclose(back, TRAIN, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", UNIT_SCALERS)
@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_train_range_maps_onto_unit_interval(name: str, margin: float) -> None:
    u = fitted(name, margin).transform(TRAIN)
    assert u.min() == pytest.approx(margin, abs=1e-12) and u.max() == pytest.approx(1 - margin, abs=1e-12)
    order = np.argsort(TRAIN)
    assert np.all(np.diff(u[order]) >= 0), "scaling must preserve order"


@pytest.mark.parametrize("name", UNIT_SCALERS)
def test_clipping_is_counted(name: str) -> None:
    scaler = fitted(name)
    lo, hi = TRAIN.min(), TRAIN.max()
    y = np.array([lo - 5.0, lo, (lo + hi) / 2, hi, hi + 1.0, hi + 100.0])
    u = scaler.transform(y)
    assert scaler.last_clipped == 3
    assert u[0] == 0.0 and u[-1] == 1.0 and u[-2] == 1.0 and 0 < u[2] < 1
    raw = scaler.transform(y, clip=False)
    assert scaler.last_clipped == 0
    assert raw[0] < 0.0 and raw[-1] > raw[-2] > 1.0
    np.testing.assert_allclose(scaler.inverse_transform(raw), y, rtol=1e-9)  # unclipped map inverts too
    scaler.transform(TRAIN)
    assert scaler.last_clipped == 0


def test_margin_keeps_nearby_test_values_unclipped() -> None:
    scaler = fitted("zscore_minmax", margin=0.05)
    span = TRAIN.max() - TRAIN.min()
    u = scaler.transform(np.array([TRAIN.max() + 0.02 * span, TRAIN.min() - 0.02 * span]))
    assert scaler.last_clipped == 0 and 0 < u.min() and u.max() < 1


def test_zscore_minmax_by_hand() -> None:
    scaler = ZScoreMinMax().fit([1.0, 2.0, 3.0, 4.0, 5.0])
    assert scaler.mean == 3.0 and scaler.std == pytest.approx(math.sqrt(2.0))  # population std
    np.testing.assert_allclose(scaler.transform([1.0, 3.0, 5.0, 2.0]), [0.0, 0.5, 1.0, 0.25])
    assert scaler.to_z(5.0) == pytest.approx(2.0 / math.sqrt(2.0))
    assert scaler.from_z(0.0) == 3.0
    assert scaler.inverse_transform(0.75) == pytest.approx(4.0)


def test_quantile_by_hand() -> None:
    scaler = Quantile().fit([0.0, 1.0, 1.0, 10.0])  # mid-ranks 0, 1.5, 3 -> p 0, 0.5, 1
    np.testing.assert_allclose(scaler.xs, [0.0, 1.0, 10.0])
    np.testing.assert_allclose(scaler.ps, [0.0, 0.5, 1.0])
    assert scaler.transform(5.5) == pytest.approx(0.75)
    assert scaler.inverse_transform(0.25) == pytest.approx(0.5)
    assert scaler.transform(-1.0) == 0.0 and scaler.last_clipped == 1


def test_signed_log_handles_heavy_tails() -> None:
    y = np.array([0.0, 1.0, 10.0, 1e3, 1e6, 1e9])
    scaler = SignedLog().fit(y)
    u = scaler.transform(y)
    assert u[2] == pytest.approx(math.log1p(10.0) / math.log1p(1e9))  # not ~1e-8 as with plain z-scores
    np.testing.assert_allclose(scaler.inverse_transform(u), y, rtol=1e-9, atol=1e-9)
    v = np.log1p(y)
    np.testing.assert_allclose(scaler.to_z(y), (v - v.mean()) / v.std())
    assert SignedLog().fit([-100.0, 100.0]).transform(0.0) == pytest.approx(0.5)


def test_identity_passes_values_through() -> None:
    scaler = build_scaler("identity").fit(TRAIN)
    y = np.array([-1e12, 0.5, 3e40])
    assert np.array_equal(scaler.transform(y), y) and np.array_equal(scaler.inverse_transform(y), y)
    assert scaler.last_clipped == 0
    assert scaler.to_z(TRAIN).mean() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", list(SCALERS))
def test_fit_uses_train_targets_only(name: str) -> None:
    test = np.array([TRAIN.max() * 3, TRAIN.min() - 7.0])
    scaler = fitted(name)
    state = scaler.state_dict()
    scaler.transform(test)
    scaler.inverse_transform([0.1, 0.9])
    assert scaler.state_dict() == state, "transforming must not refit"
    both = build_scaler(name).fit(np.concatenate([TRAIN, test]))
    assert both.state_dict() != state
    assert scaler.to_z(TRAIN).mean() == pytest.approx(0.0, abs=1e-9) or name == "signed_log"


@pytest.mark.parametrize("name", list(SCALERS))
def test_state_dict_json_roundtrip(name: str) -> None:
    scaler = fitted(name, margin=0.0)
    restored = scaler_from_state_dict(json.loads(json.dumps(scaler.state_dict())))
    assert type(restored) is type(scaler)
    probe = np.linspace(TRAIN.min() - 1, TRAIN.max() + 1, 17)
    np.testing.assert_array_equal(restored.transform(probe), scaler.transform(probe))
    np.testing.assert_array_equal(restored.inverse_transform([0.0, 0.3, 1.0]), scaler.inverse_transform([0.0, 0.3, 1.0]))
    np.testing.assert_array_equal(restored.to_z(probe), scaler.to_z(probe))
    with pytest.raises(ConfigError):
        scaler_from_state_dict({"name": "nope"})


@pytest.mark.parametrize("name", list(SCALERS))
@pytest.mark.parametrize(
    "bad, fragment",
    [
        ([3.0, 3.0, 3.0], "constant"),
        ([], "no targets"),
        ([1.0, math.nan, 2.0], "non-finite"),
        ([1.0, math.inf], "non-finite"),
        (["a", "b"], "not numeric"),
        (np.ones((3, 2)), "1-D"),
    ],
)
def test_fit_rejects_bad_targets(name: str, bad, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        build_scaler(name).fit(bad)


@pytest.mark.parametrize("name", list(SCALERS))
def test_transform_side_errors_and_nan_passthrough(name: str) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        build_scaler(name).transform([1.0])
    scaler = fitted(name)
    with pytest.raises(DataError, match="non-finite"):
        scaler.transform([1.0, math.nan])
    back = scaler.inverse_transform(np.array([0.5, math.nan]))  # NaN = invalid decode
    assert math.isfinite(back[0]) and math.isnan(back[1])
    assert scaler.transform(np.array([[1.0, 2.0]])).shape == (1, 2)  # shape preserved
    assert build_scaler(name).fit(TRAIN.reshape(-1, 1)).state_dict() == scaler.state_dict()


def test_scaler_with_normalized_tokenizer_end_to_end() -> None:
    scaler, tok = fitted("zscore_minmax"), NormalizedDigits(2, 8)
    u = scaler.transform(TRAIN)
    ids = np.array([tok.encode_ids(v) for v in u])
    decoded, valid = tok.decode_many(ids)
    assert valid.all()
    err_z = np.abs(scaler.to_z(scaler.inverse_transform(decoded)) - scaler.to_z(TRAIN))
    z_span = scaler.z_max - scaler.z_min
    assert err_z.max() <= tok.resolution(0.5) * z_span * (1 + 1e-9)


def test_decoded_value_that_overflows_in_original_units_is_invalid():
    """signed_log inverts with exp: a decoded 900 (well formed) is inf in original units, so invalid."""
    from rlreg.numbers.scalers import decoded_to_original

    scaler = build_scaler("signed_log").fit(np.array([1.0, 10.0, 1e3]))
    values, valid = decoded_to_original(scaler, np.array([2.0, 900.0, np.nan]), np.array([True, True, False]))
    assert valid.tolist() == [True, False, False]
    assert math.isclose(values[0], scaler.inverse_transform(np.array([2.0]))[0])
    assert np.isnan(values[1:]).all()

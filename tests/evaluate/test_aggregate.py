"""Aggregation of K samples per row: hand-made cases, numpy/scipy references, intervals."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from rlreg.evaluate.aggregate import (
    AGGREGATIONS,
    TRIM_FRACTION,
    aggregate,
    choose_aggregation,
    rows_without_valid,
    sample_interval,
)


@pytest.fixture
def hand_made():
    samples = np.array(
        [
            [1.0, 2.0, 3.0, 100.0],  # last one invalid → {1, 2, 3}
            [4.0, np.nan, 8.0, 6.0],  # NaN flagged valid still does not count → {4, 8, 6}
            [7.0, 7.0, 7.0, 7.0],  # all invalid → NaN
            [10.0, 0.0, 20.0, 30.0],  # all valid
        ]
    )
    valid = np.array(
        [
            [True, True, True, False],
            [True, True, True, True],
            [False, False, False, False],
            [True, True, True, True],
        ]
    )
    return samples, valid


def test_registry_names_and_trim_fraction():
    assert set(AGGREGATIONS) == {"mean", "median", "trimmed_mean"}
    assert TRIM_FRACTION == 0.1


def test_mean_and_median_on_hand_made_matrix(hand_made):
    samples, valid = hand_made
    np.testing.assert_allclose(aggregate(samples, valid, "mean"), [2.0, 6.0, np.nan, 15.0])
    np.testing.assert_allclose(aggregate(samples, valid, "median"), [2.0, 6.0, np.nan, 15.0])
    # Fewer than 10 valid samples: floor(0.1 * n) = 0, nothing trimmed.
    np.testing.assert_allclose(aggregate(samples, valid, "trimmed_mean"), [2.0, 6.0, np.nan, 15.0])


def test_all_invalid_row_is_nan_and_counted(hand_made):
    samples, valid = hand_made
    for how in AGGREGATIONS:
        result = aggregate(samples, valid, how)
        assert np.isnan(result[2]) and np.isfinite(result[[0, 1, 3]]).all()
    assert rows_without_valid(samples, valid) == 1


def test_trimmed_mean_cuts_ten_percent_each_side():
    values = np.array([[20, 1, 2, 3, 4, 5, 6, 7, 8, 1000.0]])  # 10 values: drop 1 and 1000
    assert aggregate(values, None, "trimmed_mean")[0] == pytest.approx(55 / 8)
    assert aggregate(values, None, "trimmed_mean")[0] == pytest.approx(stats.trim_mean(values[0], 0.1))
    assert aggregate(values, None, "mean")[0] == pytest.approx(105.6)
    assert aggregate(values, None, "median")[0] == pytest.approx(5.5)


@settings(max_examples=60, deadline=None)
@given(
    samples=arrays(np.float64, (5, 12), elements=st.floats(-1e6, 1e6)),
    valid=arrays(np.bool_, (5, 12)),
)
def test_aggregations_match_per_row_references(samples, valid):
    for row in range(5):
        kept = samples[row][valid[row]]
        expected = {
            "mean": np.mean(kept) if kept.size else np.nan,
            "median": np.median(kept) if kept.size else np.nan,
            "trimmed_mean": stats.trim_mean(kept, 0.1) if kept.size else np.nan,
        }
        for how, value in expected.items():
            got = aggregate(samples, valid, how)[row]
            np.testing.assert_allclose(got, value, rtol=1e-9, atol=1e-6, err_msg=how)


def test_unknown_aggregation_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(np.zeros((2, 3)), None, "mode")
    with pytest.raises(ValueError, match="does not match"):
        aggregate(np.zeros((2, 3)), np.ones((2, 2), bool), "mean")
    with pytest.raises(ValueError, match="2-D"):
        aggregate(np.zeros(3), None, "mean")


def test_choose_aggregation_picks_median_under_one_sided_outliers():
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    samples = y[:, None] + 0.1 * rng.normal(size=(200, 10))
    samples[:, :3] += 50.0  # 30 % outliers: beyond what a 10 % trim removes
    assert choose_aggregation(samples, np.ones_like(samples, bool), y) == "median"


def test_choose_aggregation_picks_mean_for_clean_gaussian_samples():
    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    samples = y[:, None] + rng.normal(size=(300, 64))
    assert choose_aggregation(samples, None, y) == "mean"  # the efficient estimator here


def test_choose_aggregation_ties_go_to_mean_and_empty_rows_are_skipped():
    y = np.array([1.0, 2.0, 3.0])
    samples = np.repeat(np.array([[1.5], [2.5], [9.0]]), 4, axis=1)  # every rule agrees
    valid = np.ones_like(samples, bool)
    valid[2] = False  # the row that would dominate RMSE has no valid sample
    assert choose_aggregation(samples, valid, y) == "mean"
    with pytest.raises(ValueError, match="no validation row"):
        choose_aggregation(samples, np.zeros_like(valid), y)


def test_sample_interval_known_case_and_invalid_rows():
    samples = np.vstack([np.arange(101.0), np.arange(101.0)])
    valid = np.ones_like(samples, bool)
    valid[1] = False
    lo, hi = sample_interval(samples, valid, alpha=0.1)
    assert lo[0] == pytest.approx(5.0) and hi[0] == pytest.approx(95.0)
    assert np.isnan(lo[1]) and np.isnan(hi[1])
    with pytest.raises(ValueError, match="alpha"):
        sample_interval(samples, valid, alpha=1.5)


def test_sample_interval_matches_numpy_quantile_on_valid_samples():
    rng = np.random.default_rng(2)
    samples = rng.normal(size=(50, 17))
    valid = rng.random((50, 17)) > 0.3
    valid[:, 0] = True
    lo, hi = sample_interval(samples, valid, alpha=0.2)
    for row in range(50):
        kept = samples[row][valid[row]]
        assert lo[row] == pytest.approx(np.quantile(kept, 0.1))
        assert hi[row] == pytest.approx(np.quantile(kept, 0.9))
    assert (lo <= hi).all()

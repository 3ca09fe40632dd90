"""Classical baselines: accuracy on a synthetic linear problem, determinism, text inputs,
target transforms and clear failures."""

import numpy as np
import pytest
from sklearn.metrics import r2_score

from rlreg.errors import DataError
from rlreg.baselines.classical import BASELINES, fit_predict_baseline, text_features


@pytest.fixture(scope="module")
def linear_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6))
    y = X @ np.array([2.0, -1.0, 0.5, 0.0, 3.0, 1.0]) + 0.3 * rng.normal(size=400)
    return X[:300], y[:300], X[300:], y[300:]


def _rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_registry():
    assert set(BASELINES) == {"ridge", "hgb"}


@pytest.mark.parametrize("name", ["ridge", "hgb"])
def test_baselines_beat_predicting_the_mean(linear_problem, name):
    X_train, y_train, X_test, y_test = linear_problem
    yhat = fit_predict_baseline(name, X_train, y_train, X_test)
    assert yhat.shape == y_test.shape
    assert _rmse(y_test, yhat) < 0.6 * _rmse(y_test, np.full_like(y_test, y_train.mean()))
    if name == "ridge":
        assert r2_score(y_test, yhat) > 0.9


def test_hgb_is_deterministic(linear_problem):
    X_train, y_train, X_test, _ = linear_problem
    first = fit_predict_baseline("hgb", X_train, y_train, X_test)
    np.testing.assert_array_equal(first, fit_predict_baseline("hgb", X_train, y_train, X_test))


def _synthetic_queries(n, seed):
    """COUNT(*) queries whose log-cardinality is linear in table and predicate choice."""
    rng = np.random.default_rng(seed)
    tables = {"title t": 1e6, "cast_info ci": 3e7, "movie_keyword mk": 4e5}
    predicates = {"t.kind_id=1": 0.3, "t.production_year>2005": 0.2, "ci.role_id=2": 0.05, "mk.keyword_id<100": 0.01}
    texts, y = [], []
    for _ in range(n):
        table = rng.choice(list(tables))
        chosen = [p for p in predicates if rng.random() < 0.5]
        where = f" WHERE {' AND '.join(chosen)}" if chosen else ""
        texts.append(f"SELECT COUNT(*) FROM {table}{where};")
        y.append(round(tables[table] * np.prod([predicates[p] for p in chosen]) * rng.lognormal(0, 0.1)))
    return texts, np.array(y, dtype=float)


@pytest.mark.parametrize("name", ["ridge", "hgb"])
def test_baselines_run_on_text_with_log_target(name):
    train_texts, y_train = _synthetic_queries(300, seed=1)
    test_texts, y_test = _synthetic_queries(100, seed=2)
    X_train, X_test = text_features(train_texts, test_texts)
    assert X_train.shape[0] == 300 and X_test.shape == (100, X_train.shape[1])
    yhat = fit_predict_baseline(name, X_train, y_train, X_test, target_transform="log1p")
    assert (yhat > -1).all()
    assert r2_score(np.log1p(y_test), np.log1p(yhat)) > 0.8


def test_log_target_transform_helps_heavy_tailed_targets():
    train_texts, y_train = _synthetic_queries(300, seed=3)
    test_texts, y_test = _synthetic_queries(100, seed=4)
    X_train, X_test = text_features(train_texts, test_texts)
    as_pair = fit_predict_baseline("ridge", X_train, y_train, X_test, target_transform=(np.log1p, np.expm1))
    by_name = fit_predict_baseline("ridge", X_train, y_train, X_test, target_transform="log1p")
    np.testing.assert_allclose(as_pair, by_name)
    raw = fit_predict_baseline("ridge", X_train, y_train, X_test)
    log_error = _rmse(np.log1p(y_test), np.log1p(by_name))
    raw_error = _rmse(np.log1p(y_test), np.log1p(np.clip(raw, 0, None)))
    assert log_error < raw_error


def test_text_features_are_fitted_on_train_texts_only():
    X_train, X_other = text_features(["select a from b", "select c from d"], ["zzzz qqqq", "select a"])
    assert X_other[0].nnz == 0  # n-grams never seen in training carry no weight
    assert X_other[1].nnz > 0


def test_bad_inputs_fail_clearly(linear_problem):
    X_train, y_train, X_test, _ = linear_problem
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_predict_baseline("xgboost", X_train, y_train, X_test)
    with pytest.raises(ValueError, match="unknown target transform"):
        fit_predict_baseline("ridge", X_train, y_train, X_test, target_transform="sqrt")
    with pytest.raises(ValueError, match="rows"):
        fit_predict_baseline("ridge", X_train, y_train[:-1], X_test)
    with_missing = X_train.copy()
    with_missing[0, 0] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        fit_predict_baseline("ridge", with_missing, y_train, X_test)
    assert np.isfinite(fit_predict_baseline("hgb", with_missing, y_train, X_test)).all()

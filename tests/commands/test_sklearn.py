"""RLRegressor: scikit-learn's API checks that need no fit, input validation, the params / clone
round trip, and one real fit (the module's only pipeline) through predict, predict_interval,
score and pickling. Why the fitting sklearn checks are skipped: see RLRegressor's docstring."""
import contextlib
import io
import json
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import estimator_checks_generator

from rlreg import RLRegressor

from conftest import TINY

pytestmark = pytest.mark.engine

# The session's tiny model settings; the data settings come from the estimator.
OVERRIDES = tuple(o for o in TINY if not o.startswith("data.")) + (
    "sft.lr=0.003", "sft.batch_size=32", "sft.eval_every=25", "eval.n_boot=100")

# sklearn checks that run without a successful fit (milliseconds each): API, tags and the
# refusals of bad input. Every other check fits at least once (about a minute here).
NO_FIT_CHECKS = {
    "check_estimator_cloneable", "check_estimator_tags_renamed", "check_valid_tag_types", "check_estimator_repr",
    "check_no_attributes_set_in_init", "check_mixin_order", "check_parameters_default_constructible",
    "check_get_params_invariance", "check_set_params", "check_do_not_raise_errors_in_init_or_set_params",
    "check_estimators_unfitted", "check_fit1d", "check_complex_data", "check_requires_y_none",
    "check_estimators_empty_data_messages", "check_supervised_y_no_nan", "check_fit2d_1sample",
    "check_estimator_sparse_tag", "check_estimator_sparse_array", "check_estimator_sparse_matrix",
}


def _no_fit_checks():
    for estimator, check in estimator_checks_generator(RLRegressor(overrides=OVERRIDES), legacy=True, mark=None):
        name = getattr(check, "func", check).__name__
        if name in NO_FIT_CHECKS:
            yield pytest.param(estimator, check, id=name)


def _step_data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """y = 10·x0 + 2·x1 + noise with x0 in {0, 1}: a one-layer model learns the step in ~60 steps
    (R² 0.95 here); the small x1 part keeps the targets continuous."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.integers(0, 2, n), rng.uniform(0, 1, n)]).astype(float)
    return X, 10.0 * X[:, 0] + 2.0 * X[:, 1] + rng.normal(0, 0.2, n)


@pytest.fixture(scope="module")
def fitted(ray_session, tmp_path_factory):
    X, y = _step_data()
    model = RLRegressor(overrides=OVERRIDES, sft_steps=60, samples=8, random_state=0,
                        run_dir=str(tmp_path_factory.mktemp("sk_runs")))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        assert model.fit(X, y) is model
    model.printed_during_fit = printed.getvalue()
    yield model, X, y
    model.close()


def test_fit_is_quiet_by_default(fitted):
    """Like scikit-learn's estimators: no lines, bars or tables (verbose=0); the run still logged."""
    model, _, _ = fitted
    assert model.verbose == 0 and model.printed_during_fit == ""
    assert (model.run_dir_ / "sft_log.jsonl").stat().st_size > 0


@pytest.mark.parametrize("estimator, check", list(_no_fit_checks()))
def test_sklearn_checks_without_fit(estimator, check):
    check(estimator)


def test_the_no_fit_checks_were_all_found():
    assert len(list(_no_fit_checks())) == len(NO_FIT_CHECKS)  # a renamed check would drop out silently


def test_fit_predict_score(fitted):
    model, X, y = fitted
    assert model.n_features_in_ == 2 and model.feature_names_ == ["x0", "x1"]
    assert (model.checkpoint_ / "task.json").is_file() and model.run_dir_.parent.name.startswith("sk_runs")
    assert model.aggregation_ in ("mean", "median", "trimmed_mean")
    assert model.metrics_["test"]["n_rows"] == 20 and model.metrics_["val"]["n_rows"] == 18
    pred = model.predict(X)
    assert pred.shape == (200,) and np.isfinite(pred).all()
    # Decoded values stay inside the range the scaler maps onto the number tokens.
    assert pred.min() >= y.min() - 1e-6 and pred.max() <= y.max() + 1e-6
    # It learned the step: the two halves are predicted far apart, and R² beats the mean.
    assert pred[X[:, 0] == 1].mean() - pred[X[:, 0] == 0].mean() > 6.0
    assert 0.5 < model.score(X, y) <= 1.0
    lower, upper = model.predict_interval(X[:10], alpha=0.2)
    assert lower.shape == upper.shape == (10,) and np.all(lower <= upper)
    # the fit recorded its validation calibration in the checkpoint, and predict_interval used it
    assert "calibration" in json.loads((model.checkpoint_ / "task.json").read_text())
    assert model.interval_kind_ == "calibrated"
    model.predict_interval(X[:10], alpha=0.2, calibrated=False)
    assert model.interval_kind_ == "sample"


def test_predict_validates_input(fitted):
    model, X, _ = fitted
    with pytest.raises(ValueError, match="X has 3 features, but RLRegressor is expecting 2"):
        model.predict(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        model.predict(np.array([[0.5, np.nan]]))
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        model.predict_interval(X[:2], alpha=1.5)


def test_fit_validates_input_before_starting_anything():
    X, y = _step_data(40)
    bad_X = X.copy()
    bad_X[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        RLRegressor().fit(bad_X, y)
    with pytest.raises(ValueError, match="could not convert string to float"):
        RLRegressor().fit(X, np.array(["a"] * 40, dtype=object))
    with pytest.raises(ValueError, match="got 3 samples"):
        RLRegressor().fit(X[:3], y[:3])
    with pytest.raises(ValueError, match="y is constant"):
        RLRegressor().fit(X, np.ones(40))
    with pytest.raises(ValueError, match="overrides must be a sequence"):
        RLRegressor(overrides="model.layers=1").fit(X, y)


def test_not_fitted():
    model = RLRegressor()
    with pytest.raises(NotFittedError):
        model.predict(np.zeros((2, 2)))
    with pytest.raises(NotFittedError):
        model.predict_interval(np.zeros((2, 2)))


def test_params_set_and_clone_round_trip():
    model = RLRegressor(overrides=("model.layers=1",), sft_steps=5, rl_steps=3, random_state=7)
    params = model.get_params()
    assert params["overrides"] == ("model.layers=1",) and params["rl_steps"] == 3
    twin = clone(model)
    assert twin is not model and twin.get_params() == params
    assert twin.set_params(samples=16, rl_steps=0) is twin
    assert (twin.samples, twin.rl_steps) == (16, 0) and model.samples is None
    assert RLRegressor(**twin.get_params()).get_params() == twin.get_params()
    with pytest.raises(ValueError, match="Invalid parameter 'layers'"):
        twin.set_params(layers=2)


def test_pickle_keeps_the_fit_and_drops_the_engine(fitted):
    model, X, _ = fitted
    model.predict(X[:2])  # makes sure the rollout actor is up
    assert model._rollout is not None
    copy = pickle.loads(pickle.dumps(model))
    assert getattr(copy, "_rollout", None) is None
    assert (copy.checkpoint_, copy.aggregation_, copy.n_features_in_) == (
        model.checkpoint_, model.aggregation_, model.n_features_in_)

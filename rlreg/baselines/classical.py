"""Classical baselines on the same splits and metrics as the language model.

Deterministic by construction: RidgeCV is closed-form; HistGradientBoosting runs with a
fixed random_state and early stopping off (early stopping draws a random validation split,
so results would depend on it). Text sources (SQL queries) become features through
char n-gram TF-IDF fitted on the training texts only.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.base import RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from rlreg.errors import DataError

RANDOM_STATE = 0
RIDGE_ALPHAS = np.logspace(-3, 3, 13)
# Cap on the text vocabulary: HGB needs dense input, so rows × this many float32 columns
# must fit in memory (5,000 queries × 2,000 n-grams ≈ 40 MB).
TEXT_MAX_FEATURES = 2000

Features = np.ndarray | sp.spmatrix
TransformPair = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]

# Named target transforms, so configs can say target_transform: log1p.
TARGET_TRANSFORMS: dict[str, TransformPair] = {
    "log1p": (np.log1p, np.expm1),
}


def _ridge(sparse: bool) -> RegressorMixin:
    # Centering would densify sparse text features; scaling alone keeps them sparse.
    return make_pipeline(StandardScaler(with_mean=not sparse), RidgeCV(alphas=RIDGE_ALPHAS))


def _hgb(sparse: bool) -> RegressorMixin:
    return HistGradientBoostingRegressor(random_state=RANDOM_STATE, early_stopping=False)


# name → factory(sparse_input) returning an unfitted estimator.
BASELINES: dict[str, Callable[[bool], RegressorMixin]] = {
    "ridge": _ridge,
    "hgb": _hgb,
}

_NEEDS_DENSE = {"hgb"}  # HistGradientBoosting refuses sparse input
_ALLOWS_MISSING = {"hgb"}  # HGB routes NaN features natively; ridge cannot


def _resolve_transform(target_transform: TransformPair | str | None) -> TransformPair | None:
    if target_transform is None or isinstance(target_transform, tuple):
        return target_transform
    if target_transform not in TARGET_TRANSFORMS:
        raise ValueError(f"unknown target transform {target_transform!r}; choose one of {sorted(TARGET_TRANSFORMS)}")
    return TARGET_TRANSFORMS[target_transform]


def _prepare(name: str, X: Features, what: str) -> Features:
    if sp.issparse(X):
        X = X.tocsr()
        if name in _NEEDS_DENSE:
            X = X.astype(np.float32).toarray()
        return X
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"{what} must be 2-D [rows, features], got shape {X.shape}")
    if name not in _ALLOWS_MISSING and not np.isfinite(X).all():
        raise DataError(f"{what} has non-finite values; baseline {name!r} cannot use them (hgb can)")
    return X


def fit_predict_baseline(
    name: str,
    X_train: Features,
    y_train: np.ndarray,
    X_test: Features,
    target_transform: TransformPair | str | None = None,
    n_threads: int | None = 1,
) -> np.ndarray:
    """Fit baseline `name` on (X_train, y_train) and predict X_test, in original units.

    target_transform = (forward, inverse) or a name from TARGET_TRANSFORMS: the model is
    fitted on forward(y) and its predictions mapped back with inverse — e.g. log1p for
    heavy-tailed targets such as SQL cardinalities.

    n_threads caps OpenMP/BLAS threads during the fit (None = library default). One is
    the default: on a busy machine competing threads made a 300-row HGB fit take 8 s
    instead of 0.05 s, and a fixed count keeps results identical across machines."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    y = np.asarray(y_train, dtype=np.float64).reshape(-1)
    train, test = _prepare(name, X_train, "X_train"), _prepare(name, X_test, "X_test")
    if train.shape[0] != y.shape[0]:
        raise ValueError(f"X_train has {train.shape[0]} rows but y_train has {y.shape[0]}")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"X_train has {train.shape[1]} features but X_test has {test.shape[1]}")
    transform = _resolve_transform(target_transform)
    fit_target = y if transform is None else np.asarray(transform[0](y), dtype=np.float64)
    if not np.isfinite(fit_target).all():
        raise DataError(f"{int((~np.isfinite(fit_target)).sum())} training targets are non-finite "
                        "(after the target transform, if any)")
    model = BASELINES[name](sp.issparse(train))
    with threadpool_limits(limits=n_threads):
        model.fit(train, fit_target)
        prediction = np.asarray(model.predict(test), dtype=np.float64)
    return prediction if transform is None else np.asarray(transform[1](prediction), dtype=np.float64)


def text_features(
    train_texts: Sequence[str], other_texts: Sequence[str], max_features: int = TEXT_MAX_FEATURES
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Char 2–4-gram TF-IDF fitted on train_texts only; returns (X_train, X_other).

    max_features trades time for fit: on 4,000 SQL queries (sqlcard synthetic) a ridge fit
    took ~2 s at 500 n-grams, ~5 s at 1,000 and ~15 s at 2,000 on one loaded core, with
    log-space R² 0.57 at 500 and 0.76 at 1,000.

    Char n-grams inside word boundaries pick up table names, columns and operators of SQL
    without a SQL parser. (Numeric literals become n-grams too, so magnitudes are seen
    only coarsely — a known limit of this baseline.)"""
    train_texts, other_texts = list(train_texts), list(other_texts)
    if not train_texts:
        raise DataError("text_features needs at least one training text")
    vectorizer = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(2, 4), lowercase=True, sublinear_tf=True,
        max_features=max_features, dtype=np.float64,
    )
    return vectorizer.fit_transform(train_texts).tocsr(), vectorizer.transform(other_texts).tocsr()


def classical_predictions(task, names) -> dict[str, dict[str, np.ndarray]]:
    """HistGradientBoosting / Ridge predictions for val and test (one fit each, on train)."""
    ds = task.dataset
    idx = {s: getattr(ds.splits, s) for s in ("train", "val", "test")}
    n_val = len(idx["val"])
    if ds.kind == "text":
        train_x, rest = text_features([ds.texts[i] for i in idx["train"]],
                                      [ds.texts[i] for s in ("val", "test") for i in idx[s]])
    else:
        train_x = ds.features[idx["train"]]
        rest = np.concatenate([ds.features[idx["val"]], ds.features[idx["test"]]])
    # Heavy-tailed positive targets (e.g. SQL cardinalities) are fitted in log space, as the model's scaler is.
    transform = "log1p" if task.scaler.name == "signed_log" and (task.y["train"] >= 0).all() else None
    out = {}
    for name in names:
        pred = fit_predict_baseline(name, train_x, task.y["train"], rest if not sp.issparse(rest) else rest.tocsr(),
                                    target_transform=transform)
        out[name] = {"val": pred[:n_val], "test": pred[n_val:]}
    return out

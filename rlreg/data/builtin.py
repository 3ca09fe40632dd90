"""Data that ships inside scikit-learn: the embedded demo sources, usable with no data folder."""
from __future__ import annotations

from typing import Callable

import pandas as pd

from rlreg.data.config import DataConfig
from rlreg.data.dataset import Dataset
from rlreg.data.tabular import build_tabular
from rlreg.errors import ConfigError

FRIEDMAN1_DEFAULT_ROWS = 1000


def _diabetes(cfg: DataConfig) -> tuple[pd.DataFrame, str]:
    from sklearn.datasets import load_diabetes

    # Unscaled features (age in years, bmi, ...) read naturally in text prompts; vector input
    # standardises them anyway.
    bunch = load_diabetes(scaled=False)
    frame = pd.DataFrame(bunch.data, columns=list(bunch.feature_names))
    frame["progression"] = bunch.target
    return frame, "progression"


def _friedman1(cfg: DataConfig) -> tuple[pd.DataFrame, str]:
    from sklearn.datasets import make_friedman1

    # Generated data: max_rows sets how many rows to draw, and seed which ones.
    n = cfg.max_rows or FRIEDMAN1_DEFAULT_ROWS
    X, y = make_friedman1(n_samples=n, n_features=10, noise=1.0, random_state=cfg.seed)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    frame["y"] = y
    return frame, "y"


BUILTINS: dict[str, Callable[[DataConfig], tuple[pd.DataFrame, str]]] = {
    "diabetes": _diabetes,
    "friedman1": _friedman1,
}


def load_builtin(spec: str, cfg: DataConfig) -> Dataset:
    if spec not in BUILTINS:
        raise ConfigError(f"data.source: unknown built-in data set 'sklearn:{spec}'; known: "
                          f"{', '.join('sklearn:' + k for k in BUILTINS)}")
    frame, target = BUILTINS[spec](cfg)
    return build_tabular(frame, cfg, name=spec, source=cfg.source, source_path=None,
                         label=f"sklearn:{spec}", target=target)

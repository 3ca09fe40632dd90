"""In-memory source `array:KEY`: arrays handed in by Python code (the RLRegressor estimator) take
the same path as a file on disk — build_tabular's checks, seeded splits and prompt rendering — so
fitting from arrays runs the very pipeline `rlreg train` runs.

The arrays live in this process only: `put_arrays` returns the key for `data.source=array:KEY`,
and the caller drops them with `drop_arrays` when the run no longer needs to load them."""
from __future__ import annotations

import uuid
from typing import Sequence

import numpy as np
import pandas as pd

from rlreg.data.config import DataConfig
from rlreg.data.dataset import Dataset
from rlreg.data.tabular import build_tabular
from rlreg.errors import DataError

PREFIX = "array"
_FRAMES: dict[str, tuple[pd.DataFrame, str]] = {}  # key -> (features + target frame, target column)


def put_arrays(X: np.ndarray, y: np.ndarray, feature_names: Sequence[str] | None = None,
               target_name: str = "y") -> str:
    """Hold X [n, f] and y [n] for `data.source=array:KEY`; returns KEY."""
    X = np.asarray(X)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2:
        raise DataError(f"array source: X must be 2-D [rows, features], got shape {X.shape}")
    if len(X) != len(y):
        raise DataError(f"array source: X has {len(X)} rows but y has {len(y)}")
    names = [str(n) for n in feature_names] if feature_names is not None else [f"x{j}" for j in range(X.shape[1])]
    if len(names) != X.shape[1] or len(set(names)) != len(names):
        raise DataError(f"array source: need {X.shape[1]} distinct feature names, got {names}")
    while target_name in names:  # the target column must not shadow a feature
        target_name += "_"
    frame = pd.DataFrame(X, columns=names)
    frame[target_name] = y
    key = uuid.uuid4().hex[:12]
    _FRAMES[key] = (frame, target_name)
    return key


def drop_arrays(key: str) -> None:
    _FRAMES.pop(key, None)


def load_arrays(spec: str, cfg: DataConfig) -> Dataset:
    """Loader for `array:KEY` (registered in rlreg.data.sources)."""
    if spec not in _FRAMES:
        raise DataError(f"data.source={PREFIX}:{spec}: no arrays under that key in this process "
                        f"(in-memory data exists only in the Python process that called put_arrays)")
    frame, target = _FRAMES[spec]
    return build_tabular(frame, cfg, name=f"{PREFIX}-{spec}", source=cfg.source, source_path=None,
                         label=f"{PREFIX}:{spec}", target=target)

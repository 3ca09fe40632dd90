"""Target scalers: fitted on train targets only, mapping them to what a number tokenizer writes.

Every scaler has fit / transform / inverse_transform, a z-space (`to_z`, `from_z`: the space of
GenRe²'s reward −(ŷ−y)²) and a JSON-serialisable state_dict. inverse_transform lets NaN (an
invalid decode) through as NaN; transform refuses non-finite targets.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from rlreg.errors import ConfigError, DataError

SCALERS: dict[str, type["TargetScaler"]] = {}
S = TypeVar("S", bound=type)


def register_scaler(cls: S) -> S:
    SCALERS[cls.name] = cls
    return cls


def build_scaler(name: str, margin: float = 0.0) -> "TargetScaler":
    """Unfitted scaler by registry name; ConfigError for an unknown name or a bad margin."""
    if name not in SCALERS:
        raise ConfigError(f"numbers.scaler must be one of {sorted(SCALERS)}, got {name!r}")
    return SCALERS[name](margin=margin)


def scaler_from_state_dict(state: dict[str, Any]) -> "TargetScaler":
    """Rebuild a fitted scaler of any registered kind from its state_dict()."""
    name = state.get("name") if isinstance(state, dict) else None
    if name not in SCALERS:
        raise ConfigError(f"scaler state names unknown scaler {name!r} (known: {sorted(SCALERS)})")
    return SCALERS[name].from_state_dict(state)


def decoded_to_original(scaler: "TargetScaler", scaled: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decoded values (the tokenizer's space) → original units and validity. A well-formed number
    that overflows in original units (e.g. exp of a huge signed_log value) is no prediction: it is
    invalid (NaN), so rewards penalise it and evaluation leaves it out, never score it as finite."""
    values = np.full(np.shape(scaled), np.nan)
    with np.errstate(over="ignore"):
        values[valid] = scaler.inverse_transform(scaled[valid])
    valid = valid & np.isfinite(values)
    values[~valid] = np.nan
    return values, valid


def _as_targets(y: Any, what: str) -> np.ndarray:
    """1-D float64 copy of targets; DataError for empty, non-numeric or non-finite input."""
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: targets are not numeric ({exc})") from exc
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{what}: expected a 1-D array of targets, got shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{what}: no targets")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise DataError(f"{what}: {int(bad.sum())} non-finite target(s), first at index {int(np.argmax(bad))}")
    return arr


def _as_values(y: Any, what: str, allow_nan: bool) -> np.ndarray:
    """float64 array of any shape for transform-side calls (NaN allowed where decodes failed)."""
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: values are not numeric ({exc})") from exc
    bad = ~np.isfinite(arr) if not allow_nan else np.isinf(arr)
    if bad.any():
        raise DataError(f"{what}: {int(bad.sum())} non-finite value(s)")
    return arr


class TargetScaler:
    """Base: margin, fitted flag, clip counter and the train z-space (mean/std of what is scaled)."""

    name = ""

    def __init__(self, margin: float = 0.0):
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin < 0.5:
            raise ConfigError(f"numbers.scaler_margin must be a number in [0, 0.5), got {margin!r}")
        self.margin = float(margin)
        self.fitted = False
        self.last_clipped = 0  # how many values the last transform(clip=True) moved into range

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{self.name} scaler is not fitted: call fit(train_targets) first")

    def _fit_z(self, values: np.ndarray) -> None:
        # population std, as sklearn's StandardScaler
        self.mean, self.std = float(values.mean()), float(values.std())
        if not (self.std > 0.0 and np.isfinite(self.std)):
            raise DataError(f"{self.name}.fit: train targets are constant (std 0); nothing to regress")

    def fit(self, y: Any) -> "TargetScaler":
        raise NotImplementedError

    def transform(self, y: Any, clip: bool = True) -> np.ndarray:
        raise NotImplementedError

    def inverse_transform(self, u: Any) -> np.ndarray:
        raise NotImplementedError

    def to_z(self, y: Any) -> np.ndarray:
        """Train z-score: the space of the squared-error reward."""
        self._require_fitted()
        return (_as_values(y, f"{self.name}.to_z", allow_nan=True) - self.mean) / self.std

    def from_z(self, z: Any) -> np.ndarray:
        self._require_fitted()
        return _as_values(z, f"{self.name}.from_z", allow_nan=True) * self.std + self.mean

    def state_dict(self) -> dict[str, Any]:
        self._require_fitted()
        return {"name": self.name, "margin": self.margin, "mean": self.mean, "std": self.std, **self._state()}

    def _state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "TargetScaler":
        if state.get("name") != cls.name:
            raise ConfigError(f"scaler state is for {state.get('name')!r}, not {cls.name!r}")
        scaler = cls(margin=state.get("margin", 0.0))
        scaler.mean, scaler.std = float(state["mean"]), float(state["std"])
        scaler._load(state)
        scaler.fitted = True
        return scaler

    def _load(self, state: dict[str, Any]) -> None:
        pass

    def _squeeze(self, u: np.ndarray, clip: bool) -> np.ndarray:
        """[0, 1] -> [margin, 1 - margin], clipping into [0, 1] (counted) when asked."""
        u = self.margin + (1.0 - 2.0 * self.margin) * u
        if clip:
            outside = (u < 0.0) | (u > 1.0)
            self.last_clipped = int(outside.sum())
            u = np.clip(u, 0.0, 1.0)
        else:
            self.last_clipped = 0
        return u

    def _unsqueeze(self, u: Any) -> np.ndarray:
        u = _as_values(u, f"{self.name}.inverse_transform", allow_nan=True)
        return (u - self.margin) / (1.0 - 2.0 * self.margin)


@register_scaler
class ZScoreMinMax(TargetScaler):
    """GenRe²'s scaling: z = (y - mean) / std with train stats, then the train z range min-maxed
    onto [0, 1] (or [margin, 1 - margin]).

    Values outside the train range map outside [0, 1], which the normalized tokenizer cannot
    write, so transform clips them into [0, 1] by default (clip=True) and counts them in
    `last_clipped`; clip=False returns the unclipped value. inverse_transform is the exact
    inverse of the unclipped map (up to float rounding).
    """

    name = "zscore_minmax"

    def fit(self, y: Any) -> "ZScoreMinMax":
        y = _as_targets(y, f"{self.name}.fit")
        self._fit_z(y)
        z = (y - self.mean) / self.std
        self.z_min, self.z_max = float(z.min()), float(z.max())
        self.fitted = True
        return self

    def transform(self, y: Any, clip: bool = True) -> np.ndarray:
        z = self.to_z(_as_values(y, f"{self.name}.transform", allow_nan=False))
        return self._squeeze((z - self.z_min) / (self.z_max - self.z_min), clip)

    def inverse_transform(self, u: Any) -> np.ndarray:
        self._require_fitted()
        return self.from_z(self.z_min + self._unsqueeze(u) * (self.z_max - self.z_min))

    def _state(self) -> dict[str, Any]:
        return {"z_min": self.z_min, "z_max": self.z_max}

    def _load(self, state: dict[str, Any]) -> None:
        self.z_min, self.z_max = float(state["z_min"]), float(state["z_max"])


@register_scaler
class SignedLog(ZScoreMinMax):
    """v = sign(y) * log1p(|y|), then zscore_minmax on v: for heavy-tailed targets (SQL
    cardinalities). The z-space is the z-score of v. Clipping as in zscore_minmax."""

    name = "signed_log"

    @staticmethod
    def forward(y: np.ndarray) -> np.ndarray:
        return np.sign(y) * np.log1p(np.abs(y))

    @staticmethod
    def backward(v: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # far outside the train range: inf is the honest answer
            return np.sign(v) * np.expm1(np.abs(v))

    def fit(self, y: Any) -> "SignedLog":
        super().fit(self.forward(_as_targets(y, f"{self.name}.fit")))
        return self

    def to_z(self, y: Any) -> np.ndarray:
        return super().to_z(self.forward(_as_values(y, f"{self.name}.to_z", allow_nan=True)))

    def from_z(self, z: Any) -> np.ndarray:
        return self.backward(super().from_z(z))

    # transform / inverse_transform go through to_z / from_z, so the log is applied once there


@register_scaler
class Quantile(TargetScaler):
    """Empirical CDF of the train targets: sorted unique train values x_i get their mid-rank
    p_i, rescaled so the smallest is 0 and the largest 1; between them piecewise-linear.

    Exact inverse on the train range. Outside it the end segments are extended linearly, so values
    land outside [0, 1]; transform clips them into [0, 1] by default and counts them in
    `last_clipped`, as zscore_minmax does. The z-space is the plain train z-score of y.
    """

    name = "quantile"

    def fit(self, y: Any) -> "Quantile":
        y = _as_targets(y, f"{self.name}.fit")
        self._fit_z(y)
        xs, counts = np.unique(y, return_counts=True)
        before = np.concatenate([[0], np.cumsum(counts)[:-1]])
        mid_rank = before + (counts - 1) / 2.0
        self.xs = xs
        self.ps = (mid_rank - mid_rank[0]) / (mid_rank[-1] - mid_rank[0])
        self.fitted = True
        return self

    def transform(self, y: Any, clip: bool = True) -> np.ndarray:
        self._require_fitted()
        y = _as_values(y, f"{self.name}.transform", allow_nan=False)
        return self._squeeze(_interp(y, self.xs, self.ps, extend=True), clip)

    def inverse_transform(self, u: Any) -> np.ndarray:
        self._require_fitted()
        return _interp(self._unsqueeze(u), self.ps, self.xs, extend=True)

    def _state(self) -> dict[str, Any]:
        return {"xs": self.xs.tolist(), "ps": self.ps.tolist()}

    def _load(self, state: dict[str, Any]) -> None:
        self.xs = np.asarray(state["xs"], dtype=np.float64)
        self.ps = np.asarray(state["ps"], dtype=np.float64)


def _interp(x: np.ndarray, xp: np.ndarray, fp: np.ndarray, extend: bool) -> np.ndarray:
    """np.interp, optionally extending the first/last segment linearly beyond the ends."""
    out = np.interp(x, xp, fp)
    if extend:
        lo, hi = x < xp[0], x > xp[-1]
        out = np.where(lo, fp[0] + (x - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0]), out)
        out = np.where(hi, fp[-1] + (x - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2]), out)
    return out


@register_scaler
class Identity(TargetScaler):
    """No scaling, for targets the ieee / p10 tokenizers write directly. Never clips (an
    out-of-range value is the tokenizer's encode error). The z-space is the train z-score."""

    name = "identity"

    def __init__(self, margin: float = 0.0):
        super().__init__(margin)
        if self.margin != 0.0:
            raise ConfigError(f"numbers.scaler_margin has no meaning for the identity scaler, got {margin}")

    def fit(self, y: Any) -> "Identity":
        self._fit_z(_as_targets(y, f"{self.name}.fit"))
        self.fitted = True
        return self

    def transform(self, y: Any, clip: bool = True) -> np.ndarray:
        self._require_fitted()
        self.last_clipped = 0
        return _as_values(y, f"{self.name}.transform", allow_nan=False).copy()

    def inverse_transform(self, u: Any) -> np.ndarray:
        self._require_fitted()
        return _as_values(u, f"{self.name}.inverse_transform", allow_nan=True).copy()

"""Split-conformal prediction intervals from the K samples per input.

The raw sample interval (the alpha/2 and 1 − alpha/2 quantiles of a row's samples) covers 1 − alpha
of the targets only if the model's sampling distribution is calibrated, and RL sharpens it: on
concrete the 90 % sample interval covered 0.53 of test targets after CE and 0.44 after ReMax.
Split conformal fixes the coverage with one number fitted on the validation split.

Conformity score (one per validation row): s = |y − ŷ| / (σ̂ + β), where ŷ is the row's aggregate of
its samples (the aggregation chosen on validation), σ̂ the standard deviation of its valid samples and
β ≥ 0 an offset chosen on validation (below).
Why this score:
- it does not depend on alpha, so one set of validation scores serves every alpha asked later —
  `rlreg predict --alpha 0.2` needs no validation samples, only the stored scores;
- dividing by the spread keeps the model's own sense of which inputs are hard: the calibrated
  interval ŷ ± q·σ̂ is wide where the samples disagree and narrow where they agree, and q rescales
  a sampler that is too narrow (q above the Gaussian 1.64 for alpha 0.1) or too wide (below);
- it is always a valid interval (q ≥ 0), unlike CQR's signed score, which can invert a too-wide
  interval. The price: the calibrated interval is symmetric about ŷ, so a skewed sample
  distribution's asymmetry is lost.
With n exchangeable validation rows, q = the ⌈(n + 1)(1 − alpha)⌉-th smallest score gives test
coverage ≥ 1 − alpha (Vovk et al. 2005; Lei et al. 2018), for rows sampled with the same K.

Why the offset β: a sharpened sampler often writes the same number K times (σ̂ = 0) on rows it still
gets wrong. With s = |y − ŷ| / σ̂ those rows' scores are enormous, q follows them, and every other
row's interval is q·σ̂ wide: on yacht (split 1 of the paper preset, 28 validation rows) q was about
2,000 and the calibrated 90 % interval 1,170 wide for targets spanning 0–62. β is a multiple of the
median validation residual |y − ŷ| (OFFSET_GRID), the one giving the narrowest validation interval
at alpha 0.1: 0 keeps the spread's adaptivity where σ̂ tracks the error, a large β tends to the
plain |y − ŷ| score (one width for every row) where it does not. Choosing β on the rows q is then
fitted on is a mild departure from the exchangeability argument; test coverage (reported beside
every calibrated interval) shows what it costs.

A floor (FLOOR_FRACTION of the median validation spread) keeps a score finite when β = 0 and σ̂ = 0.
Rows without a valid sample have no interval (NaN bounds) and are left out of the fit. Values are
in original units, as Task.decode returns them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from rlreg.errors import ConfigError
from rlreg.evaluate.aggregate import AGGREGATIONS, aggregate, effective_mask, sample_interval
from rlreg.rundir import ModelFiles

METHOD = "split-conformal |y - aggregate| / (sample std + offset)"
FLOOR_FRACTION = 1e-3
# β candidates, in units of the median validation residual; ties go to the smaller.
OFFSET_GRID = (0.0, 0.1, 0.3, 1.0, 3.0)
SELECT_ALPHA = 0.1
# task.json holds at most this many scores; more are thinned to evenly spaced order statistics
# (the quantile then moves by less than 1/MAX_STORED in rank).
MAX_STORED = 5000
DEFAULT_ALPHAS = (0.1,)


def check_alpha(alpha: Any, what: str = "alpha") -> float:
    """alpha as a float in (0, 1); ConfigError naming `what` otherwise."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{what} must be a number in (0, 1), got {alpha!r}")
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"{what} must lie in (0, 1), got {alpha}")
    return alpha


def check_alphas(alphas: Iterable[Any] | None, what: str = "alpha") -> list[float]:
    """DEFAULT_ALPHAS plus any asked, each checked, in order, without repeats."""
    out = list(DEFAULT_ALPHAS)
    for a in alphas or ():
        a = check_alpha(a, what)
        if a not in out:
            out.append(a)
    return out


def _centre_and_spread(values: np.ndarray, valid: np.ndarray | None, aggregation: str) -> tuple[np.ndarray, np.ndarray]:
    mask = effective_mask(values, valid)
    centre = aggregate(values, mask, aggregation)
    count = mask.sum(axis=1)
    filled = np.where(mask, values, 0.0)
    mean = np.divide(filled.sum(axis=1), count, out=np.full(len(count), np.nan), where=count > 0)
    sq = np.where(mask, (values - mean[:, None]) ** 2, 0.0).sum(axis=1)
    spread = np.sqrt(np.divide(sq, count, out=np.full(len(count), np.nan), where=count > 0))
    return centre, spread


@dataclass
class Calibration:
    """Sorted validation scores and what they were computed with; see the module docstring."""

    scores: np.ndarray  # sorted ascending, possibly thinned to MAX_STORED order statistics
    n: int  # validation rows the scores came from
    floor: float  # lower bound on σ̂, in original units
    aggregation: str  # the centre ŷ
    samples: int  # K per row at calibration: intervals are calibrated for this K
    offset: float = 0.0  # β, in original units (0 in calibrations written before it existed)
    method: str = METHOD

    def quantile(self, alpha: float) -> float:
        """The conformal quantile for 1 − alpha; inf when alpha < 1/(n + 1) (too few rows)."""
        alpha = check_alpha(alpha)
        return _conformal_quantile(self.scores, self.n, alpha)

    def interval(self, values: np.ndarray, valid: np.ndarray | None, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) = ŷ ∓ q·(max(σ̂, floor) + β) per row; NaN where a row has no valid sample."""
        q = self.quantile(alpha)
        centre, spread = _centre_and_spread(values, valid, self.aggregation)
        half = q * (np.maximum(spread, self.floor) + self.offset)
        return centre - half, centre + half

    def to_dict(self) -> dict:
        return {"method": self.method, "n": self.n, "floor": self.floor, "offset": self.offset,
                "aggregation": self.aggregation, "samples": self.samples,
                "scores": [float(f"{s:.6g}") for s in self.scores]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "calibration") -> "Calibration":
        """The inverse of to_dict; ConfigError naming the bad key of `where`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        missing = [k for k in ("n", "floor", "aggregation", "samples", "scores") if k not in data]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
        scores = np.asarray(data["scores"], dtype=np.float64)
        if scores.ndim != 1 or scores.size == 0 or not np.isfinite(scores).all() or (scores < 0).any():
            raise ConfigError(f"{where}.scores: expected a non-empty list of finite scores >= 0")
        if not isinstance(data["n"], int) or data["n"] < scores.size:
            raise ConfigError(f"{where}.n: expected an integer >= the {scores.size} stored scores, got {data['n']!r}")
        if data["aggregation"] not in AGGREGATIONS:
            raise ConfigError(f"{where}.aggregation: {data['aggregation']!r} is not one of {', '.join(AGGREGATIONS)}")
        floor = data["floor"]
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor > 0:
            raise ConfigError(f"{where}.floor: expected a number > 0, got {floor!r}")
        offset = data.get("offset", 0.0)
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not 0 <= offset < math.inf:
            raise ConfigError(f"{where}.offset: expected a finite number >= 0, got {offset!r}")
        return cls(scores=np.sort(scores), n=int(data["n"]), floor=float(floor), aggregation=data["aggregation"],
                   samples=int(data["samples"]), offset=float(offset), method=str(data.get("method", METHOD)))


def _conformal_quantile(sorted_scores: np.ndarray, n: int, alpha: float) -> float:
    """The ⌈(n + 1)(1 − alpha)⌉-th smallest of n scores (sorted_scores may be thinned to evenly
    spaced order statistics); inf when that rank exceeds n."""
    rank = math.ceil((n + 1) * (1.0 - alpha))  # 1-based rank among the n scores
    if rank > n:
        return math.inf
    m = len(sorted_scores)
    index = rank - 1 if m == n else round((rank - 1) * (m - 1) / max(1, n - 1))
    return float(sorted_scores[index])


def fit_calibration(values: np.ndarray, valid: np.ndarray | None, y: np.ndarray, aggregation: str,
                    offsets: Sequence[float] = OFFSET_GRID) -> Calibration:
    """Fit on validation samples [N, K] (original units) and targets [N], β from `offsets` (multiples
    of the median residual); ValueError if no row has a valid sample."""
    if not offsets or any(not 0 <= float(m) < math.inf for m in offsets):
        raise ValueError(f"calibration offsets must be a non-empty list of finite numbers >= 0, got {offsets!r}")
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != y.shape[0]:
        raise ValueError(f"calibration needs samples [N, K] for N = {y.shape[0]} targets, got {values.shape}")
    centre, spread = _centre_and_spread(values, valid, aggregation)
    rows = np.isfinite(centre) & np.isfinite(y)
    if not rows.any():
        raise ValueError("cannot calibrate: no validation row has a valid sample")
    positive = spread[rows][spread[rows] > 0]
    if positive.size:
        floor = FLOOR_FRACTION * float(np.median(positive))
    else:  # every row collapsed to one value: fall back to the targets' own scale
        floor = FLOOR_FRACTION * (float(np.std(y[rows])) or 1.0)
    residual = np.abs(y[rows] - centre[rows])
    spread_rows = np.maximum(spread[rows], floor)
    n = int(residual.size)
    scale = float(np.median(residual))
    best = None  # (validation width at SELECT_ALPHA, β, sorted scores)
    for multiple in offsets:
        offset = float(multiple) * scale
        scores = np.sort(residual / (spread_rows + offset))
        width = 2.0 * _conformal_quantile(scores, n, SELECT_ALPHA) * float(np.mean(spread_rows + offset))
        if best is None or width < best[0]:  # inf (too few rows) for every β keeps the first
            best = (width, offset, scores)
    _, offset, scores = best
    if n > MAX_STORED:
        scores = scores[np.round(np.linspace(0, n - 1, MAX_STORED)).astype(int)]
    return Calibration(scores=scores, n=n, floor=floor, aggregation=aggregation, samples=int(values.shape[1]),
                       offset=offset)


def _cover(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> dict:
    ok = np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return {"coverage": float("nan"), "width": float("nan"), "n": 0}
    inside = (lo[ok] <= y[ok]) & (y[ok] <= hi[ok])
    return {"coverage": float(inside.mean()), "width": float(np.mean(hi[ok] - lo[ok])), "n": int(ok.sum())}


def interval_report(values: np.ndarray, valid: np.ndarray | None, y: np.ndarray,
                    calibration: Calibration | None, alphas: Iterable[float] = DEFAULT_ALPHAS) -> dict:
    """Per alpha (keys like "0.1"): coverage and mean width of the raw sample interval and of the
    calibrated one (None without a calibration), over rows with a valid sample."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    out: dict = {}
    for alpha in alphas:
        alpha = check_alpha(alpha)
        row = {"nominal": 1.0 - alpha, "raw": _cover(*sample_interval(values, valid, alpha), y), "calibrated": None}
        if calibration is not None:
            row["calibrated"] = {**_cover(*calibration.interval(values, valid, alpha), y),
                                 "q": calibration.quantile(alpha)}
        out[f"{alpha:g}"] = row
    return out


def prediction_interval(values: np.ndarray, valid: np.ndarray | None, alpha: float,
                        calibration: Calibration | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) at level 1 − alpha: the calibrated interval when a calibration is given, else
    the central 1 − alpha interval of each row's samples."""
    if calibration is not None:
        return calibration.interval(values, valid, alpha)
    return sample_interval(values, valid, alpha=alpha)


def stored_calibration(checkpoint) -> Calibration | None:
    """The calibration a run recorded in its checkpoint's task.json (rlreg.model.checkpoint), if
    any: older checkpoints and runs without validation samples have none, and their intervals
    are the raw sample ones."""
    data = checkpoint.info.get("calibration")
    if data is None:
        return None
    return Calibration.from_dict(data, f"{checkpoint.model_dir / ModelFiles.TASK}: calibration")

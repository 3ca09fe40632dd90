"""Reward functions: `fn(pred, target, **columns) -> rewards`, vectorised over a batch.

`pred` and `target` are float arrays of one shape (in whatever space the caller scores, e.g.
z-space); the result is float64 of that shape, higher is better. `pred` may hold NaN for
sequences that did not decode: built-ins return NaN there without raising, and the reward
pool counts those (see `check_rewards`) and applies its own penalty. Extra keyword
arguments are data columns (ignored by the built-ins) or, when bound by `load_reward`,
options of the function such as `clip` or `delta`.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import numbers
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rlreg.errors import ConfigError

RewardFn = Callable[..., np.ndarray]

REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def decorate(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"reward function {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return decorate


def reward_names() -> list[str]:
    return sorted(REWARDS)


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} differs from target shape {t.shape}")
    return p, t


@register_reward("neg_mse")
def neg_mse(pred: np.ndarray, target: np.ndarray, **columns: Any) -> np.ndarray:
    """-(pred - target)^2: GenRe²'s reward (in z-space)."""
    p, t = _pair(pred, target)
    return -np.square(p - t)


@register_reward("clipped_mse")
def clipped_mse(pred: np.ndarray, target: np.ndarray, *, clip: float = 50.0, **columns: Any) -> np.ndarray:
    """-min((pred - target)^2, clip): bounded so one wild sample cannot dominate a group
    (GenRe²'s code-to-number targets use clip 50)."""
    p, t = _pair(pred, target)
    return -np.minimum(np.square(p - t), clip)  # np.minimum keeps NaN, so failures stay visible


@register_reward("neg_abs")
def neg_abs(pred: np.ndarray, target: np.ndarray, **columns: Any) -> np.ndarray:
    """-|pred - target|: the absolute error, less swayed than the squared one by a wild sample."""
    return -np.abs(np.subtract(*_pair(pred, target)))


@register_reward("huber")
def huber(pred: np.ndarray, target: np.ndarray, *, delta: float = 1.0, **columns: Any) -> np.ndarray:
    """Negative Huber loss: quadratic (0.5 e^2) within `delta`, linear beyond."""
    if delta <= 0:
        raise ValueError(f"huber: delta must be > 0, got {delta}")
    p, t = _pair(pred, target)
    err = np.abs(p - t)
    quadratic = np.minimum(err, delta)
    return -(0.5 * np.square(quadratic) + delta * (err - quadratic))


@register_reward("neg_rel")
def neg_rel(pred: np.ndarray, target: np.ndarray, *, eps: float = 1e-8, **columns: Any) -> np.ndarray:
    """-|pred - target| / (|target| + eps): relative error, for targets far from zero."""
    p, t = _pair(pred, target)
    return -np.abs(p - t) / (np.abs(t) + eps)


@register_reward("neg_log_ratio")
def neg_log_ratio(pred: np.ndarray, target: np.ndarray, *, floor: float = 1e-12, **columns: Any) -> np.ndarray:
    """-|log(pred) - log(target)| for positive targets (e.g. SQL cardinalities; q-error in logs).

    A non-positive prediction is scored as if it were `floor`, i.e. the penalty
    -|log(floor) - log(target)|: never better than the smallest positive prediction, so the
    reward stays monotone in pred. A non-positive target is a ValueError (no log scale).
    """
    p, t = _pair(pred, target)
    if floor <= 0:
        raise ValueError(f"neg_log_ratio: floor must be > 0, got {floor}")
    if np.any(t <= 0):  # NaN targets compare False and come out NaN below
        raise ValueError("neg_log_ratio needs positive targets; use neg_rel or neg_abs for others")
    clamped = np.where(p > 0, p, floor)  # NaN > 0 is False: NaN pred -> floor ...
    clamped = np.where(np.isnan(p), np.nan, clamped)  # ... so put the NaN (a failed decode) back
    return -np.abs(np.log(clamped) - np.log(t))


# ---------------------------------------------------------------------------- loading by spec
def _import_attribute(spec: str) -> Any:
    """`package.module:function` or `path/to/file.py:function` (dots after ':' walk attributes)."""
    module_part, _, attr_path = spec.partition(":")
    if not module_part or not attr_path:
        raise ConfigError(f"reward {spec!r}: expected 'module:function' or 'file.py:function'")
    try:
        if module_part.endswith(".py"):
            path = Path(module_part)
            if not path.is_file():
                raise ConfigError(f"reward {spec!r}: file {str(path)!r} not found")
            # Named after the file so that tracebacks read well; not added to sys.modules,
            # hence Ray workers must load the spec themselves rather than receive the callable.
            module_spec = importlib.util.spec_from_file_location(f"rlreg_user_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_part)
    except ConfigError:
        raise
    except ModuleNotFoundError as err:
        raise ConfigError(f"reward {spec!r}: cannot import module {module_part!r} ({err})") from err
    except Exception as err:  # the user's module raised while importing: say so, with its message
        raise ConfigError(f"reward {spec!r}: importing {module_part!r} failed: {type(err).__name__}: {err}") from err
    obj: Any = module
    for name in attr_path.split("."):
        if not hasattr(obj, name):
            raise ConfigError(f"reward {spec!r}: {module_part!r} has no attribute {attr_path!r}")
        obj = getattr(obj, name)
    return obj


def _bind_options(fn: Callable, spec: str, options: dict[str, Any]) -> Callable:
    """Bind options by keyword; each must be a named parameter (not swallowed by **columns,
    where a misspelt option would otherwise vanish silently)."""
    if not options:
        return fn
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: trust the caller
        return functools.partial(fn, **options)
    named = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)][2:]
    for key in options:
        if key not in named:
            raise ConfigError(f"reward {spec!r} has no option {key!r} (options: {named})")
    return functools.partial(fn, **options)


def load_reward(spec: str, **options: Any) -> RewardFn:
    """A reward function from a registry name or a `module:function` / `file.py:function` path,
    with `options` (e.g. clip=10) bound by keyword. Every failure is a ConfigError naming `spec`."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"reward: expected a name or 'module:function', got {spec!r}")
    if spec in REWARDS:
        fn = REWARDS[spec]
    elif ":" in spec:
        fn = _import_attribute(spec)
        if not callable(fn):
            raise ConfigError(f"reward {spec!r}: {type(fn).__name__} object is not callable")
    else:
        raise ConfigError(f"unknown reward {spec!r} (known: {reward_names()}, or 'module:function')")
    return _bind_options(fn, spec, options)


def check_rewards(out: Any, expected_shape: tuple[int, ...], name: str) -> np.ndarray:
    """Validate a reward function's output; return the bool mask of its NaN/inf entries.

    Wrong shape or a non-numeric result is a ValueError naming the function. Real numbers in
    an array or a (nested) list pass; None entries count as failures (NaN), as in TRL's
    "None to abstain". The caller then scores with `np.asarray(out, dtype=np.float64)` and
    masks the failures instead of dropping them silently.
    """
    expected_shape = tuple(expected_shape)
    try:
        raw = np.asarray(out)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"reward {name!r} returned a ragged {type(out).__name__}: {err}") from err
    if raw.dtype.kind == "O":  # e.g. a list mixing floats and None
        odd = [v for v in raw.ravel() if v is not None and not isinstance(v, numbers.Real)]
        if odd:
            raise ValueError(f"reward {name!r} returned non-numbers, e.g. {odd[0]!r}")
    elif raw.dtype.kind not in "biuf":
        raise ValueError(f"reward {name!r} returned {type(out).__name__} of dtype {raw.dtype}, expected real numbers")
    if raw.shape != expected_shape:
        raise ValueError(f"reward {name!r} returned shape {raw.shape}, expected {expected_shape}")
    return ~np.isfinite(raw.astype(np.float64))

"""The `tune:` config section: what `rlreg tune` sweeps and how (search, scheduler, concurrency).

The search space maps dotted RunConfig keys to one sampling spec each, e.g.

    tune:
      space:
        reward.fn: {grid: [neg_mse, neg_abs]}
        rl.group_size: {choice: [4, 8]}
        rl.lr: {loguniform: [1.0e-5, 1.0e-3]}

Kept free of Ray imports so that loading any config stays cheap; rlreg.tune.sweep turns the
space into Ray Tune domains and runs the sweep. The keys are checked against the whole run
config by RunConfig.validate (check_space_keys), which knows the schema this module does not."""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from rlreg.errors import ConfigError

SEARCHES = ("random", "grid", "optuna")
SCHEDULERS = ("asha", "none")
# spec kind -> what its argument is
KINDS = {
    "choice": "a list of values, one drawn per trial (every value once under search: grid)",
    "grid": "a list of values, every one tried",
    "uniform": "[low, high]",
    "loguniform": "[low, high], both > 0",
    "randint": "[low, high): an integer, high excluded",
}
FINITE_KINDS = ("choice", "grid")
# Sweeping any of these changes the model or its supervised stage: each trial then trains its own.
OWN_SFT_PREFIXES = ("numbers.", "model.", "data.", "sft.")
UNSWEEPABLE = ("run_dir", "tune")


@dataclass
class TuneConfig:
    metric: str = "val_rmse"  # reported every rl.eval_every RL steps; the final report adds test_* metrics
    mode: str = "min"  # min | max
    num_samples: int = 1  # random/grid: repeats of the whole grid; optuna: number of trials
    max_concurrent: int = 1  # trials at once (capped by what the cluster holds)
    search: str = "random"  # random | grid (choice lists become grids) | optuna (needs `pip install optuna`)
    scheduler: str = "asha"  # asha (stop bad trials early) | none
    grace_period: int = 10  # RL steps every trial runs before ASHA may stop it
    reduction_factor: float = 2.0  # ASHA keeps the best 1/reduction_factor at each rung
    trial_cpus: float = 0.1  # the trial's own process (the RL controller), besides its actors
    final_eval: bool = True  # sampled val/test evaluation at the end of each finished trial
    time_budget_s: float | None = None  # stop starting/continuing trials after this long
    check_resources: bool = True  # fail fast when a trial cannot fit the cluster (off: autoscaling clusters)
    space: dict = field(default_factory=dict)  # dotted RunConfig key -> {kind: argument}; see KINDS

    def validate(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"tune.mode must be min or max, got {self.mode!r}")
        if self.search not in SEARCHES:
            raise ConfigError(f"tune.search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"tune.scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        for key in ("num_samples", "max_concurrent", "grace_period"):
            if getattr(self, key) < 1:
                raise ConfigError(f"tune.{key} must be >= 1, got {getattr(self, key)}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"tune.reduction_factor must be > 1, got {self.reduction_factor}")
        if self.trial_cpus <= 0:
            raise ConfigError(f"tune.trial_cpus must be > 0, got {self.trial_cpus}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ConfigError(f"tune.time_budget_s must be > 0, got {self.time_budget_s}")
        for key, spec in self.space.items():
            check_spec(str(key), spec, self.search)


def _leaf_type(key: str, root: type) -> Any:
    """The annotated type of dotted `key` in the `root` config dataclass; ConfigError naming the bad
    part if it has none."""
    tp: Any = root
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(tp):
            if tp is dict or typing.get_origin(tp) is dict:
                return Any  # inside a free-form mapping such as reward.options: checked by value later
            where = ".".join(parts[:i])
            raise ConfigError(f"tune.space: '{key}' goes past the setting '{where}', which is a value, not a section")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        if part not in names:
            import difflib

            prefix = ".".join(parts[:i])
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean '{'.'.join([*parts[:i], close[0]])}'?)" if close else ""
            known = ", ".join(sorted(names))
            raise ConfigError(f"tune.space: unknown config key '{key}'{hint}; "
                              f"known keys in {prefix or 'the top level'}: {known}")
        tp = hints[part]
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"tune.space: '{key}' is a config section; sweep a key inside it, e.g. "
                          f"'{key}.{dataclasses.fields(tp)[0].name}'")
    return tp


def check_space_keys(space: dict, root: type) -> None:
    """Every swept key names a setting of `root` (the run config) that may be swept."""
    for key in space:
        check_key(str(key), root)


def check_key(key: str, root: type) -> None:
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"tune.space: '{key}' is not a dotted config key")
    if key.split(".")[0] in UNSWEEPABLE:
        raise ConfigError(f"tune.space: '{key}' cannot be swept (each trial gets its own run_dir; "
                          f"the tune section configures the sweep itself)")
    _leaf_type(key, root)


def check_spec(key: str, spec: Any, search: str) -> None:
    """One spec: a mapping with exactly one KINDS key and a well-formed argument."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        kinds = "; ".join(f"{k}: {v}" for k, v in KINDS.items())
        raise ConfigError(f"tune.space['{key}']: expected a mapping with exactly one of — {kinds}; got {spec!r}")
    ((kind, arg),) = spec.items()
    if kind in FINITE_KINDS:
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"tune.space['{key}'].{kind}: expected a non-empty list of values, got {arg!r}")
    else:
        if (not isinstance(arg, list) or len(arg) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in arg)
                or not arg[0] < arg[1]):
            raise ConfigError(f"tune.space['{key}'].{kind}: expected [low, high] with low < high, got {arg!r}")
        if kind == "loguniform" and arg[0] <= 0:
            raise ConfigError(f"tune.space['{key}'].loguniform: both bounds must be > 0, got {arg!r}")
        if kind == "randint" and not all(float(v).is_integer() for v in arg):
            raise ConfigError(f"tune.space['{key}'].randint: bounds must be integers, got {arg!r}")
        if search == "grid":
            raise ConfigError(f"tune.space['{key}']: search: grid needs finite values (choice or grid), "
                              f"not {kind}; use search: random for ranges")
    if kind == "grid" and search == "optuna":
        raise ConfigError(f"tune.space['{key}']: search: optuna cannot take grid values; use choice instead")


def candidate_values(spec: dict) -> list[Any]:
    """Values worth checking against the config schema before any trial starts (range ends for ranges)."""
    ((kind, arg),) = spec.items()
    if kind in FINITE_KINDS:
        return list(arg)
    if kind == "randint":
        return [int(arg[0]), int(arg[1]) - 1]
    return [float(arg[0]), float(arg[1])]


def needs_own_sft(space: dict) -> bool:
    """True when a swept key changes the model, its data or its supervised stage."""
    return any(str(key).startswith(OWN_SFT_PREFIXES) for key in space)


def grid_size(space: dict, search: str) -> int:
    """Trials per sample under random/grid search (Tune expands every grid fully)."""
    size = 1
    for spec in space.values():
        ((kind, arg),) = spec.items()
        if kind == "grid" or (kind == "choice" and search == "grid"):
            size *= len(arg)
    return size



def set_dotted(mapping: dict, key: str, value: Any) -> None:
    """mapping[a][b][c] = value for key 'a.b.c', creating sections as needed."""
    *sections, leaf = key.split(".")
    node = mapping
    for part in sections:
        node = node.setdefault(part, {})
    node[leaf] = value

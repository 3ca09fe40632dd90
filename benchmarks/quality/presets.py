"""Presets of the quality benchmark: which datasets, splits and methods, under which budget.

The budget rule, the same for every dataset: every LM method uses the same model and the same
supervised budget (sft.steps, early stopping on validation); the RL methods start from that run's
CE checkpoint and add `rl.steps` steps of `rl.batch_size` inputs × `rl.group_size` samples. The
regression head trains with the supervised budget; Ridge and HGB use their defaults. Every LM
method is scored by sampling (`ks[-1]` samples per test input, aggregation chosen on validation).
"""
from __future__ import annotations

from rlreg.errors import ConfigError

METHODS = ("Ridge", "HGB", "RegHead", "CE", "CE+NTL", "CE+ReMax", "CE+GRPO", "CE+GenRe2")
RL_METHODS = ("CE+ReMax", "CE+GRPO", "CE+GenRe2")

# Per-method overrides of the base config. GRPO takes a lower learning rate and the std filter:
# at the ReMax rate it collapsed the sampling distribution on concrete (examples/RESULTS.md).
METHOD_OVERRIDES: dict[str, dict] = {
    "CE": {"sft": {"loss": "ce"}},
    "CE+NTL": {"sft": {"loss": "ntl_was"}},
    "CE+ReMax": {"rl": {"advantage": "remax", "expert_ce_coef": 0.0}},
    "CE+GRPO": {"rl": {"advantage": "grpo", "expert_ce_coef": 0.0, "std_filter_tol": 0.001, "lr_scale": 0.3}},
    "CE+GenRe2": {"rl": {"advantage": "remax", "expert_ce_coef": 0.05}},
}

_VECTOR_NUMBERS = {"tokenizer": "normalized", "base": 2, "length": 8, "scaler": "zscore_minmax"}
# SQL cardinalities span 1 .. 1e6+: IEEE-style tokens on log-scaled targets, scored on log1p(y).
_SQL_NUMBERS = {"tokenizer": "ieee", "base": 10, "mantissa_digits": 3, "exponent_digits": 1, "scaler": "signed_log"}


def _uci(name: str, **data) -> dict:
    return {"name": f"uci:{name}", "data": {"source": f"uci:{name}", "input": "vector", **data},
            "numbers": _VECTOR_NUMBERS, "score_space": "original", "split_key": "split"}


def _csv(name: str, path: str, target: str) -> dict:
    # No official splits: split k is the seeded random split with data.seed = k.
    return {"name": name, "data": {"source": f"csv:{path}", "target": target, "input": "vector"},
            "numbers": _VECTOR_NUMBERS, "score_space": "original", "split_key": "seed"}


def _sqlcard(name: str, **data) -> dict:
    # SQL prompts run to ~300 BPE tokens (joins with several predicates).
    return {"name": f"sqlcard:{name}", "data": {"source": f"sqlcard:{name}", "input": "text", **data},
            "numbers": _SQL_NUMBERS, "model": {"max_positions": 384}, "score_space": "log1p", "split_key": "seed"}


_BASE_SMALL = {
    "model": {"layers": 1, "hidden": 64, "heads": 2, "soft_tokens": 2, "encoder_hidden": 64,
              "max_positions": 160, "prompt_vocab": 300},
    "engine": {"kv_cache_memory_bytes": 67108864},
    "learner": {"world_size": 1, "zero_stage": 0},
    "sft": {"steps": 40, "batch_size": 32, "lr": 0.003, "eval_every": 20, "patience": 2, "select_by": "loss"},
    "rl": {"steps": 3, "batch_size": 8, "group_size": 4, "lr": 0.0001, "eval_every": 0, "eval_samples": 4},
    "reward": {"workers": 1},
    "eval": {"samples": 8, "n_boot": 200, "plots": False},
}

_BASE_FULL = {
    "model": {"layers": 2, "hidden": 128, "heads": 4, "soft_tokens": 4, "encoder_hidden": 256,
              "max_positions": 192, "prompt_vocab": 256},
    "learner": {"world_size": 1, "zero_stage": 1},
    "sft": {"steps": 600, "batch_size": 64, "lr": 0.001, "eval_every": 100, "patience": 3},
    "rl": {"steps": 60, "batch_size": 16, "group_size": 8, "lr": 0.0001, "eval_every": 0, "eval_samples": 8},
    "reward": {"workers": 1},
    "eval": {"samples": 16, "n_boot": 1000, "plots": False},
}

# The paper's shape (GenRe² tabular configs): width 256, 3 decoder layers; RL steps of 128 inputs ×
# 16 samples at lr 1e-5 with warm-up and a cosine decay. The supervised settings here are only the
# starting point: the paper preset replaces sft.lr / sft.batch_size per dataset with the winner of
# its `rlreg tune` search (PAPER_TUNE), shared by every LM method of that dataset.
PAPER_COMPLETIONS = 75_000  # per RL run: 10x the full preset's 60 x 16 x 8 = 7,680
PAPER_STEP = (128, 16)  # inputs x samples per RL step
_BASE_PAPER = {
    "model": {"layers": 3, "hidden": 256, "heads": 4, "soft_tokens": 4, "encoder_hidden": 256,
              "max_positions": 192, "prompt_vocab": 256},
    # warm-up 10 % of the steps (the paper: 100 warm-up steps), then cosine down to 0.1 x lr
    "learner": {"world_size": 1, "zero_stage": 1, "warmup_fraction": 0.1, "min_lr_ratio": 0.1},
    "sft": {"steps": 1500, "batch_size": 64, "lr": 0.001, "eval_every": 100, "patience": 4},
    "rl": {"steps": -(-PAPER_COMPLETIONS // (PAPER_STEP[0] * PAPER_STEP[1])), "batch_size": PAPER_STEP[0],
           "group_size": PAPER_STEP[1], "lr": 1e-5, "eval_every": 0, "eval_samples": 16},
    "reward": {"workers": 1},
    "eval": {"samples": 128, "n_boot": 1000, "plots": False},
}

# At the paper's rate GRPO needs no lower one: every RL method runs at lr 1e-5 (GRPO keeps its std filter).
PAPER_METHOD_OVERRIDES: dict[str, dict] = {
    **METHOD_OVERRIDES,
    "CE+GRPO": {"rl": {"advantage": "grpo", "expert_ce_coef": 0.0, "std_filter_tol": 0.001}},
}
# The CE search per dataset (benchmarks/quality/tuning.py): a 3 x 2 grid, 6 trials. Learning rates a
# half-decade apart around the full preset's 1e-3; batch 64 (the full preset's) and 128 (the RL step's
# inputs). Steps: at most sft.steps, the number actually used chosen by early stopping on validation.
# The paper's search is 25 Optuna trials; 6 is what fits beside the preset's ~100 training runs on
# 2 cores (one search costs about one split's supervised runs), and a grid reports every value's score.
PAPER_TUNE = {"space": {"sft.lr": {"grid": [3e-4, 1e-3, 3e-3]}, "sft.batch_size": {"grid": [64, 128]}},
              "split": 0}
# Probes of each RL run on 256 validation rows every 4 steps (greedy, 16 samples).
PAPER_DIAGNOSTICS = {"every": 4, "val_rows": 256, "samples": 16}

PRESETS: dict[str, dict] = {
    # CI: two small datasets (one tabular, one SQL text), one split each, a tiny model, a few steps.
    "small": {"base": _BASE_SMALL, "splits": [0], "ks": [1, 4, 16],
              "datasets": [_uci("yacht"), _sqlcard("scale")]},
    # The closing-note table. kin8nm and the SQL set are subsampled (seeded, data.max_rows) to keep
    # the run within about an hour on 2 cores; the JSON records every setting.
    "full": {"base": _BASE_FULL, "splits": [0, 1], "ks": [1, 4, 16, 64],
             "datasets": [_uci("concrete"), _uci("energy"), _uci("yacht"), _uci("kin8nm", max_rows=3000),
                          _csv("tabular:airfoil", "tabular/airfoil.csv", "out"),
                          _sqlcard("synthetic", max_rows=1500)]},
    # The paper's budget (issue 15): 4 UCI sets on their official splits 0-2, kin8nm whole (8,192 rows).
    # Cheapest first, so that early stops still leave complete (dataset, split) groups.
    "paper": {"base": _BASE_PAPER, "splits": [0, 1, 2], "ks": [1, 4, 16, 64, 128],
              "datasets": [_uci("yacht"), _uci("energy"), _uci("concrete"), _uci("kin8nm")],
              "method_overrides": PAPER_METHOD_OVERRIDES, "tune": PAPER_TUNE, "diagnostics": PAPER_DIAGNOSTICS},
}


def get_preset(name: str, splits: int | None = None, datasets: list[str] | None = None,
               methods: list[str] | None = None) -> dict:
    """A copy of preset `name`, optionally narrowed to the first `splits` splits, some datasets
    (by name) and some methods."""
    import copy

    if name not in PRESETS:
        raise ConfigError(f"unknown quality preset {name!r}; choose one of {', '.join(PRESETS)}")
    preset = copy.deepcopy(PRESETS[name])
    preset["name"] = name
    if splits is not None:
        if splits < 1:
            raise ConfigError(f"--splits must be >= 1, got {splits}")
        preset["splits"] = list(range(splits))
    if datasets:
        known = [d["name"] for d in preset["datasets"]]
        unknown = [d for d in datasets if d not in known]
        if unknown:
            raise ConfigError(f"--datasets: {unknown} not in preset {name!r} ({', '.join(known)})")
        preset["datasets"] = [d for d in preset["datasets"] if d["name"] in datasets]
    preset["methods"] = list(METHODS)
    if methods:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
        needs_ce = any(m in RL_METHODS for m in methods) and "CE" not in methods
        preset["methods"] = [m for m in METHODS if m in methods or (needs_ce and m == "CE")]
    return preset

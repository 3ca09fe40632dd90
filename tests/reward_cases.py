"""Shared by the reward-pool and bad-input tests: a user module of misbehaving reward functions
and a few targets encoded by a small number tokenizer."""
from pathlib import Path

import numpy as np

USER_REWARDS = """
import time
import numpy as np

def half_error(pred, target, **columns):
    return -0.5 * np.abs(pred - target)

def raises(pred, target, **columns):
    raise RuntimeError("boom")

def some_nan(pred, target, **columns):
    out = -np.abs(pred - target)
    out[::2] = np.nan
    return out

def wrong_shape(pred, target, **columns):
    return np.zeros(len(pred) + 1)

def slow(pred, target, **columns):
    time.sleep(5)
    return -np.abs(pred - target)

def by_weight(pred, target, *, weight):
    # a custom reward that names the data column it reads
    return -np.abs(pred - target) * weight

def hangs(pred, target, **columns):
    time.sleep(30)
    return -np.abs(pred - target)
"""


def reward_case(folder: Path):
    """(path of the user reward module, tokenizer, fitted scaler, targets, their token ids)."""
    from rlreg.numbers.normalized import NormalizedDigits
    from rlreg.numbers.scalers import build_scaler

    path = folder / "user_rewards.py"
    path.write_text(USER_REWARDS)
    tok = NormalizedDigits(base=2, length=6)
    scaler = build_scaler("zscore_minmax").fit(np.linspace(0.0, 10.0, 50))
    targets = np.array([1.0, 4.0, 7.5, 9.0])
    ids = np.asarray([tok.encode_ids(float(v)) for v in scaler.transform(targets)])
    return path, tok, scaler, targets, ids

"""`rlreg tune CONFIG`: a Ray Tune sweep over the config's tune.space (each trial a full RL run)."""
from __future__ import annotations

import argparse

from rlreg.config import load_config
from rlreg.tune.sweep import run_tune


def run(args: argparse.Namespace) -> int:
    run_tune(load_config(args.config, args.overrides))
    return 0

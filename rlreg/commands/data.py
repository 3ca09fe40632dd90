"""`rlreg data show SOURCE`: rows, features, target statistics and splits of a data source."""
from __future__ import annotations

import argparse

from rlreg.config import load_config
from rlreg.data.show import show_dataset


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, [f"data.source={args.source}", *args.overrides])
    print(show_dataset(cfg.data))
    return 0

"""`rlreg sft CONFIG`: the supervised stage only (token CE / NTL / DIST2) and its sampled evaluation."""
from __future__ import annotations

import argparse

from rlreg.commands.report import print_results
from rlreg.config import load_config
from rlreg.train.pipeline import run_supervised


def run(args: argparse.Namespace) -> int:
    print_results(run_supervised(load_config(args.config, args.overrides), "sft"))
    return 0

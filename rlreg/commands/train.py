"""`rlreg train CONFIG [--resume RUN_DIR]`: supervised stage, then RL, evaluated before and after."""
from __future__ import annotations

import argparse

from rlreg.commands.report import print_results
from rlreg.config import load_config
from rlreg.rundir import RunDir
from rlreg.train.pipeline import run_train


def run(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = RunDir.existing(args.resume, "--resume")
        # The run's own saved config wins; CONFIG only names what was run, overrides still apply.
        cfg = load_config(run_dir.config, [*args.overrides, f"run_dir={args.resume}"])
    else:
        cfg = load_config(args.config, args.overrides)
    print_results(run_train(cfg, resume=bool(args.resume)))
    return 0

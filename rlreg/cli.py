"""Command line: `rlreg data show SOURCE`, `rlreg train CONFIG`. Later stages add their commands."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rlreg.errors import RlregError

EPILOG = "Settings: any config key as dotted.key=value after the config file (e.g. model.layers=4 run_dir=runs/x)."


def _cmd_data_show(args: argparse.Namespace) -> int:
    from rlreg.config import load_config
    from rlreg.data.show import show_dataset

    cfg = load_config(args.config, [f"data.source={args.source}", *args.overrides])
    print(show_dataset(cfg.data))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rlreg.config import load_config
    from rlreg.errors import ConfigError
    from rlreg.train.main import run_train

    if args.resume:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there (not an rlreg run directory)")
        # The run's own saved config wins; CONFIG only names what was run, overrides still apply.
        cfg = load_config(saved, [*args.overrides, f"run_dir={args.resume}"])
    else:
        cfg = load_config(args.config, args.overrides)
    run_train(cfg, resume=bool(args.resume))
    return 0


def _cmd_sft(args: argparse.Namespace) -> int:
    from rlreg.config import load_config
    from rlreg.train.main import run_supervised

    run_supervised(load_config(args.config, args.overrides), "sft")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlreg", description="Decoding-based regression trained by RL on Ray.",
                                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="inspect data sources")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    show = data_sub.add_parser("show", help="rows, features, target statistics and splits of a source",
                               epilog="SOURCE: uci:NAME, csv:PATH, sqlcard:NAME, sklearn:diabetes, sklearn:friedman1")
    show.add_argument("source")
    show.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. data.split=3")
    show.add_argument("--config", default=None, help="a YAML config whose data section to start from")
    show.set_defaults(func=_cmd_data_show)

    sft = sub.add_parser("sft", help="supervised stage (token-level CE / NTL / DIST2) + sampled evaluation",
                         epilog=EPILOG)
    sft.add_argument("config")
    sft.add_argument("overrides", nargs="*")
    sft.set_defaults(func=_cmd_sft)

    train = sub.add_parser("train", help="supervised stage then RL (ReMax/GRPO/...) + evaluation before and after", epilog=EPILOG)
    train.add_argument("config")
    train.add_argument("overrides", nargs="*")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    train.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RlregError as err:
        print(f"rlreg: error: {err}", file=sys.stderr)
        return 2

"""`python -m benchmarks.quality --preset NAME [--output FILE.json]`: the same run as
`rlreg bench quality`, for any preset in presets.py (the CLI's --preset lists its own choices)."""
from __future__ import annotations

import argparse

from benchmarks.quality.presets import PRESETS
from benchmarks.quality.runner import run_quality


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality")
    parser.add_argument("--preset", choices=tuple(PRESETS), required=True)
    parser.add_argument("--output", default=None, metavar="FILE.json")
    parser.add_argument("--splits", type=int, default=None)
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=None)
    parser.add_argument("--methods", type=lambda s: s.split(","), default=None)
    args = parser.parse_args(argv)
    run_quality(args.preset, args.output, args.splits, args.datasets, args.methods)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Command line: argument parsing only; each command runs in its own module of rlreg.commands."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from rlreg import console, device
from rlreg.commands.bench import BENCHMARKS
from rlreg.errors import RlregError

# -v may stand anywhere (users put it after the command); it is taken out before parsing.
VERBOSE_FLAGS = ("-v", "--verbose")
EPILOG = "Settings: any config key as dotted.key=value after the config file (e.g. model.layers=4 run_dir=runs/x)."


def _command(name: str):
    """The `run(args)` of rlreg.commands.<name>, imported only when that command runs (the others'
    engines and Ray are not loaded for it, nor for --help)."""
    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(f"rlreg.commands.{name}").run(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlreg", description="Decoding-based regression trained by RL on Ray.",
                                     epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show what the engines, learner ranks, Ray and the libraries print "
                             "(otherwise in RUN_DIR/logs/); accepted anywhere on the line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="inspect data sources")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    show = data_sub.add_parser("show", help="rows, features, target statistics and splits of a source",
                               epilog="SOURCE: uci:NAME, csv:PATH, sqlcard:NAME, sklearn:diabetes, sklearn:friedman1")
    show.add_argument("source")
    show.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. data.split=3")
    show.add_argument("--config", default=None, help="a YAML config whose data section to start from")
    show.set_defaults(func=_command("data"))

    sft = sub.add_parser("sft", help="supervised stage (token-level CE / NTL / DIST2) + sampled evaluation",
                         epilog=EPILOG)
    sft.add_argument("config")
    sft.add_argument("overrides", nargs="*")
    sft.set_defaults(func=_command("sft"))

    train = sub.add_parser("train", help="supervised stage then RL (ReMax/GRPO/...) + evaluation before and after", epilog=EPILOG)
    train.add_argument("config")
    train.add_argument("overrides", nargs="*")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    train.add_argument("--dry-run", action="store_true",
                       help="check the config and print where the learner ranks and engines would run; start nothing")
    train.set_defaults(func=_command("train"))

    tune = sub.add_parser("tune", help="Ray Tune sweep over the config's tune.space (each trial a full RL run)",
                          epilog="The tune: section of CONFIG holds the space, e.g. tune.space: {reward.fn: {grid: "
                                 "[neg_mse, neg_abs]}}. Writes results.csv, best.yaml and plots. " + EPILOG)
    tune.add_argument("config")
    tune.add_argument("overrides", nargs="*")
    tune.set_defaults(func=_command("tune"))

    ev = sub.add_parser("eval", help="evaluate a run's checkpoint again by sampling (any split, any K)",
                        epilog="Writes RUN_DIR/eval_<split>.json and plots; metrics.json is left as it is. "
                               "Overrides: e.g. eval.aggregation=median eval.temperature=0.7")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("overrides", nargs="*", help="dotted.key=value")
    ev.add_argument("--samples", type=int, default=None, metavar="K", help="samples per input (default: the run's eval.samples)")
    ev.add_argument("--split", choices=("test", "val", "train"), default="test")
    ev.add_argument("--baselines", action="store_true", help="add HistGradientBoosting and Ridge on the same split")
    ev.add_argument("--alpha", type=float, action="append", default=None, metavar="ALPHA",
                    help="also report the 1-ALPHA intervals, raw and calibrated (repeatable; 0.1 is always reported)")
    ev.set_defaults(func=_command("eval"))

    cmp = sub.add_parser("compare", help="finished runs side by side: metrics, the settings that differ, curves",
                         epilog="Prints the test/validation metrics of each run and the config keys whose values "
                                "differ; writes compare.json and compare.png (validation RMSE and mean reward "
                                "over steps) into --output.")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished `rlreg sft` / `rlreg train` runs")
    cmp.add_argument("--output", default=".", metavar="DIR", help="where to write (default: the current directory)")
    cmp.set_defaults(func=_command("compare"))

    pr = sub.add_parser("predict", help="predict new rows (CSV / JSONL) with a checkpoint, with intervals",
                        epilog="Input: the checkpoint's feature columns by name (a 'text' column for text sources); "
                               "other columns are copied to the output. Output (CSV or JSONL by extension): those "
                               "columns + prediction, lower, upper, samples_valid. Overrides: engine.* / ray.* only.")
    pr.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint directory, e.g. RUN_DIR/checkpoint")
    pr.add_argument("overrides", nargs="*", help="dotted.key=value (engine.*, ray.*, eval.chunk_inputs)")
    pr.add_argument("--input", required=True, metavar="FILE", help=".csv or .jsonl")
    pr.add_argument("--output", required=True, metavar="FILE", help=".csv or .jsonl (written atomically)")
    pr.add_argument("--samples", type=int, default=32, metavar="K", help="samples per row (default 32)")
    pr.add_argument("--alpha", type=float, default=0.1, help="interval: central 1-alpha of the samples (default 0.1)")
    pr.add_argument("--aggregation", choices=("mean", "median", "trimmed_mean"), default=None,
                    help="default: the one chosen on validation for this checkpoint, else mean")
    pr.add_argument("--temperature", type=float, default=None, help="default: the run's eval.temperature")
    pr.set_defaults(func=_command("predict"))

    bench = sub.add_parser("bench", help="speed benchmarks vs HF generate / TRL, and the quality benchmark",
                           epilog="Writes benchmarks/results/NAME.json unless --output is given; see benchmarks/README.md.")
    bench.add_argument("name", choices=BENCHMARKS, metavar="NAME", help=", ".join(BENCHMARKS))
    bench.add_argument("--output", metavar="FILE.json", default=None)
    bench.add_argument("--repeats", type=int, default=None, metavar="N",
                       help="timed repeats per side (default 3; 1 with --quick)")
    bench.add_argument("--quick", action="store_true", help="smoke mode: tiny model, few repeats")
    comma_list = lambda text: [part.strip() for part in text.split(",") if part.strip()]  # noqa: E731
    bench.add_argument("--preset", choices=("small", "full", "paper"), default=None,
                       help="quality only: small (CI: tiny models, one split) or full (default small)")
    bench.add_argument("--splits", type=int, default=None, metavar="N", help="quality only: first N splits")
    bench.add_argument("--datasets", type=comma_list, default=None, metavar="A,B",
                       help="quality only: a subset of the preset's datasets, e.g. uci:yacht,sqlcard:scale")
    bench.add_argument("--methods", type=comma_list, default=None, metavar="A,B",
                       help="quality only: a subset of methods, e.g. CE,CE+ReMax (RL methods bring CE)")
    bench.set_defaults(func=_command("bench"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in VERBOSE_FLAGS for a in argv)
    args, extra = parser.parse_known_args([a for a in argv if a not in VERBOSE_FLAGS])
    console.set_verbose(verbose or console.verbose())
    console.hush_libraries()
    device.name_deepspeed_accelerator()
    # argparse stops filling a positional list at the first option, so `key=value` settings written
    # after options (`rlreg predict CKPT --input a.csv --output b.csv engine.seed=1`) arrive here.
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except RlregError as err:
        print(f"rlreg: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        # The traceback (an actor's included: Ray carries it) follows in full; say where the
        # actors' own output went, which is where their side of the story is.
        folder = os.environ.get(console.LOG_DIR_ENV)
        if folder and not console.verbose():
            print(f"rlreg: the engines', learner ranks' and reward actors' output is in {folder}/ "
                  "(one file per role and pid; -v shows it here)", file=sys.stderr)
        raise

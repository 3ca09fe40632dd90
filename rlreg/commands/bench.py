"""`rlreg bench NAME`: runs one benchmark of the repository's benchmarks/ folder and writes its JSON.

The benchmarks are not part of the installed package (they need peers such as TRL and the shared
data folder): this loads the benchmarks/ package of the source checkout rlreg is installed from,
without touching sys.path, and says in one line when there is none."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from rlreg.errors import ConfigError

BENCHMARKS = ("rollout", "step", "learner", "learner_memory", "answer_logits", "sync", "scaling", "pretrained",
              "quality")
PACKAGE = "benchmarks"


def _import_benchmarks():
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    root = Path(__file__).resolve().parents[2]  # rlreg/commands/bench.py -> the checkout
    init = root / PACKAGE / "__init__.py"
    if not init.is_file():
        raise ConfigError(f"rlreg bench runs the benchmarks/ folder of a source checkout, and rlreg is installed "
                          f"from {root} without one: clone the repository and `pip install -e` it")
    spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module  # its submodules import each other as benchmarks.*
    spec.loader.exec_module(module)
    return module


def load_benchmark(name: str):
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    _import_benchmarks()
    return importlib.import_module(f"{PACKAGE}.{name}")


def missing_requirements(name: str) -> list[str]:
    """Python modules benchmark `name` needs that are not installed."""
    module = load_benchmark(name)
    return [m for m in getattr(module, "REQUIRES", ()) if importlib.util.find_spec(m) is None]


def run_benchmark(name: str, output: str | None = None, repeats: int | None = None, quick: bool = False) -> Path:
    """Run one benchmark, write its JSON, return the path. `quick`: smoke mode (tiny model, 1 repeat)."""
    if name == "quality":  # presets instead of repeats
        return run_quality_benchmark("small" if quick else None, output)
    _import_benchmarks()
    from benchmarks.common import BenchArgs, prepare_process, write_result

    prepare_process()  # before any benchmark module loads torch
    module = load_benchmark(name)
    missing = missing_requirements(name)
    if missing:
        raise ConfigError(f"benchmark {name!r} needs {', '.join(missing)}: pip install -e '.[bench]'")
    repeats = (1 if quick else 3) if repeats is None else repeats
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    if not quick and repeats < 3:
        print(f"note: {repeats} repeat(s); the committed results use >= 3", file=sys.stderr)
    args = BenchArgs(repeats=repeats, quick=quick, output=Path(output) if output else None)
    data = module.run(args)
    path = write_result(data, args.output, quick)
    print(f"\n{name}: ratio {data['ratio']:.3g} ({data['ratio_means']}); wrote {path}")
    return path


def run_quality_benchmark(preset: str | None, output: str | None, splits: int | None = None,
                          datasets: list[str] | None = None, methods: list[str] | None = None) -> Path:
    """`rlreg bench quality`: its own options (a preset instead of repeats); see benchmarks/quality/."""
    _import_benchmarks()
    from benchmarks.quality import run_quality

    return run_quality(preset or "small", output, splits, datasets, methods)


def run(args: argparse.Namespace) -> int:
    if args.name == "quality":
        run_quality_benchmark(args.preset, args.output, args.splits, args.datasets, args.methods)
        return 0
    if args.preset or args.splits or args.datasets or args.methods:
        print("note: --preset/--splits/--datasets/--methods apply only to `rlreg bench quality`", file=sys.stderr)
    run_benchmark(args.name, output=args.output, repeats=args.repeats, quick=args.quick)
    return 0

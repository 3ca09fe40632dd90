"""Sample numbers from the (untrained or trained) model through a vLLM rollout worker and show them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def preview_samples(task, worker, cfg, split: str = "val", call_timeout_s: float = 600.0) -> dict:
    from rlreg.actors.session import get_with_timeout

    count = min(cfg.preview.inputs, len(task.prompts[split]))
    prompts = task.prompts[split][:count]
    samples = get_with_timeout(
        worker.sample.remote(prompts, task.allowed_hf, cfg.preview.samples, cfg.preview.temperature),
        call_timeout_s, "rollout worker sampling")
    values, valid = task.decode(samples.token_ids)
    rows = []
    for i in range(count):
        ok = values[i][valid[i]]
        rows.append({"target": float(task.y[split][i]),
                     "mean": float(ok.mean()) if ok.size else float("nan"),
                     "min": float(ok.min()) if ok.size else float("nan"),
                     "max": float(ok.max()) if ok.size else float("nan"),
                     "valid": int(valid[i].sum())})
    return {"split": split, "samples_per_input": cfg.preview.samples, "rows": rows,
            "invalid_rate": float(1 - valid.mean())}


def format_preview(result: dict) -> str:
    lines = [f"{'row':>4} {'target':>12} {'mean':>12} {'min':>12} {'max':>12} {'valid':>6}"]
    for i, row in enumerate(result["rows"]):
        lines.append(f"{i:>4} {row['target']:>12.4g} {row['mean']:>12.4g} {row['min']:>12.4g} "
                     f"{row['max']:>12.4g} {row['valid']:>3}/{result['samples_per_input']}")
    lines.append(f"invalid samples: {result['invalid_rate']:.1%}")
    return "\n".join(lines)


def write_preview(result: dict, run_dir: Path) -> Path:
    path = Path(run_dir) / "preview.json"
    path.write_text(json.dumps(result, indent=1))
    return path

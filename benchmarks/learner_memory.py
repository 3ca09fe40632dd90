"""learner_memory: peak memory and time of one learner optimizer step (rlreg.actors.learner_rank.
LearnerRank.step: DeepSpeed ZeRO-1, one rank, fp32, torch AdamW) at ≈ 105 M parameters, by how the
step holds its activations:

- whole: the rank's shard in one forward/backward pass (learner.micro_batch_size=0), shared-prefix
  forward on and off;
- micro: learner.micro_batch_size=4, gradients of the passes accumulated into one step;
- micro + checkpointing: the same with learner.gradient_checkpointing (shared_prefix off: the two
  cannot be combined, see LearnerConfig.validate).

The batch is an RL step's: 4 inputs × G = 8 samples (prompts ≈ 45 BPE tokens, 8 number tokens),
RL objective with GRPO-style advantages. Each variant runs in a fresh Python process (no Ray: the
LearnerRank object is built and connected in-process, the same code a Ray actor runs), so one
variant's freed memory cannot inflate another's numbers. Per timed step, after one untimed warm-up
step (which allocates the optimizer states): glibc's free memory is returned (malloc_trim), the RSS
is read (`base_mb`: model, gradients, optimizer states), the kernel's RSS high-water mark is reset
(/proc/self/clear_refs) and read after the step (`peak_mb`, VmHWM); `step_mb` = peak - base is what
the step itself adds (activations, and gradients that live only during it). Ratio = whole-shard
(plain forward) peak over micro + checkpointing peak."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import BenchArgs, load_average, median, print_table, result

NAME = "learner_memory"
REQUIRES: tuple[str, ...] = ()
ROOT = Path(__file__).resolve().parents[1]
# name -> learner overrides
VARIANTS = {
    "whole_shared_prefix": {"micro_batch_size": 0, "shared_prefix": True},
    "whole": {"micro_batch_size": 0, "shared_prefix": False},
    "micro_shared_prefix": {"micro_batch_size": 4, "shared_prefix": True},
    "micro": {"micro_batch_size": 4, "shared_prefix": False},
    "micro_checkpointing": {"micro_batch_size": 4, "shared_prefix": False, "gradient_checkpointing": True},
}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_variant(model_dir: str, learner: dict, inputs: int, group: int, steps: int, seed: int = 0) -> dict:
    """In this process: a connected LearnerRank, one warm-up step, then `steps` timed steps."""
    import ctypes

    import numpy as np

    from rlreg import device
    from rlreg.actors.config import LearnerConfig
    from rlreg.actors.deepspeed_setup import free_port
    from rlreg.actors.learner_rank import LearnerRank
    from rlreg.algos.config import RLLossOptions
    from rlreg.algos.experience import LearnerBatch

    cfg = LearnerConfig(world_size=1, zero_stage=1, **learner)
    cfg.validate()
    device.configure_torch_threads()
    rank = LearnerRank(0, 1, model_dir, cfg, lr=1e-5, total_steps=1000)
    rank.connect("127.0.0.1", free_port())
    prompts = json.loads(Path(model_dir, "bench_prompts.json").read_text())[:inputs]
    rng = np.random.default_rng(seed)
    rows = inputs * group
    allowed = rank.number_tokenizer.allowed
    tokens = np.stack([rng.choice(np.flatnonzero(allowed[t]), size=rows) for t in range(allowed.shape[0])], axis=1)
    batch = LearnerBatch(prompts=[p for p in prompts for _ in range(group)], tokens=tokens,
                         advantages=rng.normal(size=rows))
    (shard,) = batch.shards(1, cfg.micro_batch_size)
    options = RLLossOptions(temperature=1.0, clip_eps=None, loss_agg="token_mean", kl_coef=0.0, kl_kind="k3",
                            kl_in="loss", entropy_coef=0.0, expert_ce_coef=0.0)
    libc = ctypes.CDLL("libc.so.6")
    rank.step(shard, "rl", options)  # warm-up: allocates gradients and the optimizer states
    seconds, peaks, bases, losses = [], [], [], []
    for _ in range(steps):
        libc.malloc_trim(0)
        bases.append(_rss_kb("VmRSS") / 1024)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        t0 = time.perf_counter()
        stats = rank.step(shard, "rl", options)
        seconds.append(time.perf_counter() - t0)
        peaks.append(_rss_kb("VmHWM") / 1024)
        losses.append(stats["loss"])
    params = sum(p.numel() for p in rank.engine.module.parameters())
    return {"seconds": seconds, "peak_mb": peaks, "base_mb": bases, "loss": losses, "params": params,
            "passes": len(shard.micro_batches()), "rows": rows, "completion_tokens": int(tokens.shape[1]),
            "prompt_tokens": float(np.mean([len(p) for p in prompts]))}


def _run_child(model_dir: Path, learner: dict, inputs: int, group: int, steps: int) -> dict:
    """measure_variant in a fresh interpreter (its own memory high-water mark)."""
    spec = json.dumps({"model_dir": str(model_dir), "learner": learner, "inputs": inputs, "group": group,
                       "steps": steps})
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    out = subprocess.run([sys.executable, "-m", "benchmarks.learner_memory", spec], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"learner_memory variant {learner} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: BenchArgs) -> dict:
    from benchmarks.fixtures import make_task, workdir

    size = "tiny" if args.quick else "100M"
    inputs, group = (2, 4) if args.quick else (4, 8)
    steps = 1 if args.quick else args.repeats
    load_before = load_average()
    raw: dict[str, dict] = {}
    with workdir() as root:
        _, task = make_task(size, root)
        model_dir = Path(task.model_dir)
        (model_dir / "bench_prompts.json").write_text(json.dumps([list(map(int, p)) for p in task.prompts["train"]]))
        for name, learner in VARIANTS.items():
            if args.quick:
                learner = {**learner, "micro_batch_size": learner["micro_batch_size"] and 2}
            raw[name] = _run_child(model_dir, learner, inputs, group, steps)
            print(f"  {name}: peak {median(raw[name]['peak_mb']):.0f} MB, {median(raw[name]['seconds']):.2f} s/step",
                  flush=True)
    medians = {name: {"peak_mb": median(r["peak_mb"]), "base_mb": median(r["base_mb"]),
                      "step_mb": median([p - b for p, b in zip(r["peak_mb"], r["base_mb"])]),
                      "seconds": median(r["seconds"]), "passes": r["passes"]} for name, r in raw.items()}
    any_run = next(iter(raw.values()))
    print_table(f"learner_memory: one learner step, {any_run['params'] / 1e6:.1f} M params, {any_run['rows']} rows",
                ["variant", "passes", "peak MB", "base MB", "step adds MB", "s/step"],
                [[n, m["passes"], m["peak_mb"], m["base_mb"], m["step_mb"], m["seconds"]] for n, m in medians.items()])
    # The variants compute the same step: their losses must agree (else the comparison is moot).
    losses = [r["loss"][0] for r in raw.values()]
    config = {"size": size, "params": any_run["params"], "rows": any_run["rows"], "inputs": inputs, "group": group,
              "prompt_tokens_mean": any_run["prompt_tokens"], "completion_tokens": any_run["completion_tokens"],
              "variants": VARIANTS, "zero_stage": 1, "world_size": 1, "dtype": "float32", "timed_steps": steps,
              "warmup_steps": 1, "memory": "VmHWM after resetting it (clear_refs 5) right before the step; base = "
                                           "VmRSS after malloc_trim, before the step",
              "call": "rlreg.actors.learner_rank.LearnerRank.step in a fresh process per variant (no Ray)"}
    ratio = medians["whole"]["peak_mb"] / medians["micro_checkpointing"]["peak_mb"]
    return result(NAME, config, medians, raw, ratio,
                  "peak MB of the whole shard in one pass (plain forward) over peak MB with micro_batch_size + "
                  "gradient checkpointing", load_before, loss_spread=max(losses) - min(losses))


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps(measure_variant(**spec)))

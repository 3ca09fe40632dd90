"""step: one full RL step — rollout + reward + update + weight sync — of rlreg (RLRunner.step: vLLM
actor, reward actors, DeepSpeed learner actor) vs TRL's GRPOTrainer, both on CPU: same model, data
(diabetes rows as text prompts), G, batch and number length; seconds per step.

The two alternate step by step inside one run (TRL's trainer calls back into rlreg between its
steps, order A B B A ...); the first step of each side is a warm-up and is not counted."""
from __future__ import annotations

import time

from benchmarks.common import BenchArgs, load_average, median, print_table, result
from benchmarks.fixtures import make_task, parameter_count, start_ray, workdir

NAME = "step"
REQUIRES: tuple[str, ...] = ("trl", "datasets")
PHASES = ("time_rollout", "time_reward", "time_learn", "time_sync")


def measure_size(size: str, args: BenchArgs, batch: int, group: int, root) -> dict:
    from rlreg import device
    from rlreg.train.rl import RLRunner

    from benchmarks.trl_peer import StepTimer, build_trainer

    cfg, task = make_task(size, root, [f"rl.batch_size={batch}", f"rl.group_size={group}"])
    device.configure_torch_threads()  # TRL runs in this process; same thread count as rlreg's actors
    runner = RLRunner(cfg, task, task.model_dir, root / f"rl-{size}")
    rlreg_seconds: list[float] = []
    phases: list[dict] = []

    def rlreg_step(_k: int) -> None:
        t0 = time.perf_counter()
        stats = runner.step()
        rlreg_seconds.append(time.perf_counter() - t0)
        phases.append({p: stats[p] for p in PHASES})

    timer = StepTimer(rlreg_step)
    try:
        trainer = build_trainer(task, cfg, batch, group, args.repeats + 1, root / f"trl-{size}", timer)
        trainer.train()
    finally:
        runner.shutdown()
    # Index 0 is each side's warm-up step.
    raw = {"rlreg": rlreg_seconds[1:], "trl": timer.seconds[1:]}
    split = {"rlreg": {p: median([ph[p] for ph in phases[1:]]) for p in PHASES},
             "trl": {"generate": median(timer.generate_seconds[1:]),
                     "reward_loss_update": median([s - g for s, g in zip(timer.seconds[1:],
                                                                          timer.generate_seconds[1:])])}}
    seconds = {k: median(v) for k, v in raw.items()}
    return {"params": parameter_count(task), "seconds_per_step": seconds, "phases": split,
            "ratio": seconds["trl"] / seconds["rlreg"], "raw": raw,
            "raw_phases": {"rlreg": phases, "trl_generate": timer.generate_seconds}}


def run(args: BenchArgs) -> dict:
    from benchmarks.trl_peer import NOTES

    sizes = ["tiny"] if args.quick else ["1M", "25M"]
    batch, group = (2, 4) if args.quick else (8, 16)
    load_before = load_average()
    start_ray()
    root = workdir()
    per_size = {size: measure_size(size, args, batch, group, root) for size in sizes}
    headline = sizes[-1]
    config = {"sizes": sizes, "batch_inputs": batch, "group_size": group, "number_tokens": 8,
              "data": "sklearn:diabetes rows as text (data.input=text), 40-50 prompt tokens",
              "advantage": "grpo (both)", "kl": 0, "ppo_epochs": 1, "dtype": "float32 (both)",
              "repeats": args.repeats, "warmup_steps": 1,
              "rlreg": "RLRunner.step: 1 vLLM rollout actor, 2 reward actors, 1 DeepSpeed ZeRO-1 learner "
                       "(shared-prefix forward), weight sync every step",
              "peer": "trl.GRPOTrainer (transformers generate, use_cpu, gradient checkpointing off, beta=0)"}
    medians = {size: {"seconds_per_step": r["seconds_per_step"], "phases": r["phases"], "params": r["params"],
                      "ratio": r["ratio"]} for size, r in per_size.items()}
    rows = [[size, r["params"], r["seconds_per_step"]["rlreg"], r["seconds_per_step"]["trl"], r["ratio"]]
            for size, r in per_size.items()]
    print_table("step: seconds per RL step (median)", ["size", "params", "rlreg s", "TRL s", "ratio"], rows)
    for size, r in per_size.items():
        print(f"  {size} rlreg phases: " + ", ".join(f"{k[5:]} {v:.3g}s" for k, v in r["phases"]["rlreg"].items())
              + f" | TRL generate {r['phases']['trl']['generate']:.3g}s, "
                f"rest {r['phases']['trl']['reward_loss_update']:.3g}s")
    return result(NAME, config, medians, {s: r["raw"] for s, r in per_size.items()}, per_size[headline]["ratio"],
                  f"TRL seconds per step over rlreg seconds per step at {headline}", load_before,
                  notes=NOTES, target=3.0, raw_phases={s: r["raw_phases"] for s, r in per_size.items()})

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


def measure_size(size: str, args: BenchArgs, batch: int, group: int, root, trl_threads: tuple[int, ...]) -> dict:
    import ray

    from rlreg.train.rl import RLRunner

    from benchmarks import inside
    from benchmarks.trl_peer import StepTimer, build_trainer

    cfg, task = make_task(size, root, [f"rl.batch_size={batch}", f"rl.group_size={group}"])
    runner = RLRunner(cfg, task, task.model_dir, root / f"rl-{size}")
    threads = ray.get(runner.learner.ranks[0].__ray_call__.remote(inside.torch_threads))
    rlreg_seconds: list[float] = []
    phases: list[dict] = []

    def rlreg_step(_k: int) -> None:
        t0 = time.perf_counter()
        stats = runner.step()
        rlreg_seconds.append(time.perf_counter() - t0)
        phases.append({p: stats[p] for p in PHASES})

    timer = StepTimer(rlreg_step, trl_threads)
    try:
        # One warm-up step per thread setting, then `repeats` timed steps per setting.
        steps = (args.repeats + 1) * len(trl_threads)
        trainer = build_trainer(task, cfg, batch, group, steps, root / f"trl-{size}", timer)
        trainer.train()
    finally:
        runner.shutdown()
    trl_raw = {t: [r for r in timer.records if r["threads"] == t][1:] for t in trl_threads}
    trl_median = {t: median([r["seconds"] for r in recs]) for t, recs in trl_raw.items()}
    best = min(trl_median, key=trl_median.get)
    raw = {"rlreg": rlreg_seconds[1:], **{f"trl_{t}_threads": [r["seconds"] for r in trl_raw[t]] for t in trl_threads}}
    split = {"rlreg": {p: median([ph[p] for ph in phases[1:]]) for p in PHASES},
             "trl": {"generate": median([r["generate"] for r in trl_raw[best]]),
                     "reward_loss_update": median([r["seconds"] - r["generate"] for r in trl_raw[best]])}}
    seconds = {"rlreg": median(rlreg_seconds[1:]), "trl": trl_median[best],
               **{f"trl_{t}_threads": s for t, s in trl_median.items()}}
    return {"params": parameter_count(task), "seconds_per_step": seconds, "phases": split, "trl_threads": best,
            "rlreg_threads": threads,
            "ratio": seconds["trl"] / seconds["rlreg"], "raw": raw,
            "raw_phases": {"rlreg": phases, "trl": timer.records}}


def run(args: BenchArgs) -> dict:
    from benchmarks import inside
    from benchmarks.trl_peer import NOTES

    sizes = ["tiny"] if args.quick else ["1M", "25M"]
    batch, group = (2, 4) if args.quick else (8, 16)
    load_before = load_average()
    start_ray()
    inside.ship_by_value()
    trl_threads = (1,) if args.quick else (1, 2)
    with workdir() as root:
        per_size = {size: measure_size(size, args, batch, group, root, trl_threads) for size in sizes}
    headline = sizes[-1]
    config = {"sizes": sizes, "batch_inputs": batch, "group_size": group, "number_tokens": 8,
              "data": "sklearn:diabetes rows as text (data.input=text), 40-50 prompt tokens",
              "advantage": "grpo (both)", "kl": 0, "ppo_epochs": 1, "dtype": "float32 (both)",
              "repeats": args.repeats, "warmup_steps": 1, "trl_torch_threads_tried": list(trl_threads),
              "torch_threads": "rlreg: ray.torch_threads default in every actor; TRL: each setting tried, "
                               "fastest counted",
              "rlreg": "RLRunner.step: 1 vLLM rollout actor, 2 reward actors, 1 DeepSpeed ZeRO-1 learner "
                       "(shared-prefix forward), weight sync every step",
              "peer": "trl.GRPOTrainer (transformers generate, use_cpu, gradient checkpointing off, beta=0)"}
    medians = {size: {"seconds_per_step": r["seconds_per_step"], "phases": r["phases"], "params": r["params"],
                      "ratio": r["ratio"], "trl_threads": r["trl_threads"], "rlreg_threads": r["rlreg_threads"]}
               for size, r in per_size.items()}
    rows = [[size, r["params"], r["seconds_per_step"]["rlreg"], r["rlreg_threads"], r["seconds_per_step"]["trl"],
             r["trl_threads"], r["ratio"]] for size, r in per_size.items()]
    print_table("step: seconds per RL step (median)",
                ["size", "params", "rlreg s", "threads", "TRL s (fastest)", "threads", "ratio"], rows)
    for size, r in per_size.items():
        print(f"  {size} rlreg phases: " + ", ".join(f"{k[5:]} {v:.3g}s" for k, v in r["phases"]["rlreg"].items())
              + f" | TRL generate {r['phases']['trl']['generate']:.3g}s, "
                f"rest {r['phases']['trl']['reward_loss_update']:.3g}s")
    return result(NAME, config, medians, {s: r["raw"] for s, r in per_size.items()}, per_size[headline]["ratio"],
                  f"TRL seconds per step over rlreg seconds per step at {headline}", load_before,
                  notes=NOTES, target=3.0, raw_phases={s: r["raw_phases"] for s, r in per_size.items()})

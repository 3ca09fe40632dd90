"""step: one full RL step — rollout + reward + update + weight sync — of rlreg (RLRunner.step: vLLM
actor, reward actors, DeepSpeed learner actor) vs TRL's GRPOTrainer, both on CPU: same model, data
(diabetes rows as text prompts), G, batch and number length; seconds per step.

Each size is measured in float32 and bfloat16 (model.dtype: rlreg's vLLM engine and DeepSpeed
learner follow it), TRL with the model in the same dtype; results are keyed "SIZE/DTYPE". Two TRL
peers: "trl" (transformers generate) and "trl_vllm" (TRL's vLLM colocate mode, see trl_peer.NOTES).

rlreg and each peer alternate step by step inside one run (TRL's trainer calls back into rlreg
between its steps, order A B B A ...); each peer's ratio is over the rlreg steps interleaved with
it. The first step of each side in each segment is a warm-up and is not counted."""
from __future__ import annotations

import time

import dataclasses
import tempfile
from pathlib import Path

from benchmarks.common import SIZES, BenchArgs, load_average, median, print_table, result, write_result
from benchmarks.fixtures import make_task, parameter_count, start_ray, workdir

NAME = "step"
REQUIRES: tuple[str, ...] = ("trl", "datasets")
PHASES = ("time_rollout", "time_reward", "time_learn", "time_sync")


PEERS = ("trl", "trl_vllm")
DTYPES = ("float32", "bfloat16")
# 100 M on 2 cores: one TRL step takes about a minute, so only torch threads = 2 (TRL's faster
# setting at 25 M and above in the fp32 results) is tried for the peers there.
THREADS_BY_SIZE = {"100M": (2,)}
REPEATS_BY_SIZE = {"100M": 2}  # at most this many timed steps per side and peer at 100 M


def measure_size(size: str, args: BenchArgs, batch: int, group: int, root, trl_threads: tuple[int, ...],
                 dtype: str = "float32", peers: tuple[str, ...] = PEERS) -> dict:
    import gc

    import ray

    from rlreg.device import learner_bf16, model_dtype
    from rlreg.train.rl import RLRunner

    import torch

    from benchmarks import inside, trl_peer
    from benchmarks.trl_peer import StepTimer, build_trainer

    cfg, task = make_task(size, root, [f"rl.batch_size={batch}", f"rl.group_size={group}"], dtype=dtype)
    if model_dtype(task.model_dir) != dtype:
        raise AssertionError(f"model built in {model_dtype(task.model_dir)}, not {dtype}")
    runner = RLRunner(cfg, task, task.model_dir, root / f"rl-{size}-{dtype}")
    threads = ray.get(runner.learner.ranks[0].__ray_call__.remote(inside.torch_threads))
    seg: dict[str, dict] = {}
    try:
        for peer in peers:
            rlreg_seconds: list[float] = []
            phases: list[dict] = []

            def rlreg_step(_k: int, rlreg_seconds=rlreg_seconds, phases=phases) -> None:
                t0 = time.perf_counter()
                stats = runner.step()
                rlreg_seconds.append(time.perf_counter() - t0)
                phases.append({p: stats[p] for p in PHASES})

            timer = StepTimer(rlreg_step, trl_threads)
            # One warm-up step per thread setting, then `repeats` timed steps per setting.
            steps = (args.repeats + 1) * len(trl_threads)
            trainer = build_trainer(task, cfg, batch, group, steps, root / f"{peer}-{size}-{dtype}", timer,
                                    dtype=dtype, use_vllm=peer == "trl_vllm")
            trainer.train()
            torch.set_num_threads = trl_peer._SET_NUM_THREADS  # undo vLLM's CPU worker (trl_peer)
            # accelerate keeps references to the prepared model and optimizer: drop them before the
            # next peer builds its own (at 100 M this process reached 12 GB in the second segment)
            trainer.accelerator.free_memory()
            del trainer
            gc.collect()
            seg[peer] = _segment(peer, rlreg_seconds, phases, timer.records, trl_threads)
            print(f"  step {size}/{dtype} {peer}: rlreg {seg[peer]['rlreg']:.3g}s, {peer} {seg[peer]['peer']:.3g}s, "
                  f"ratio {seg[peer]['ratio']:.3g}", flush=True)
    finally:
        runner.shutdown()
    first = seg[peers[0]]
    all_rlreg = [x for p in peers for x in seg[p]["raw_rlreg"]]
    seconds = {"rlreg": median(all_rlreg), **{p: seg[p]["peer"] for p in peers},
               **{f"rlreg_beside_{p}": seg[p]["rlreg"] for p in peers},
               **{k: v for p in peers for k, v in seg[p]["per_threads"].items()}}
    split = {"rlreg": first["phases_rlreg"], **{p: seg[p]["phases_peer"] for p in peers}}
    raw = {"rlreg": first["raw_rlreg"], **{f"rlreg_beside_{p}": seg[p]["raw_rlreg"] for p in peers[1:]},
           **{k: v for p in peers for k, v in seg[p]["raw_peer"].items()}}
    return {"size": size, "dtype": dtype, "params": parameter_count(task), "seconds_per_step": seconds,
            "phases": split, "trl_threads": first["threads"], "peer_threads": {p: seg[p]["threads"] for p in peers},
            "rlreg_threads": threads, "learner_bf16": learner_bf16(cfg.learner.bf16, task.model_dir),
            "ratio": first["ratio"], "ratios": {p: seg[p]["ratio"] for p in peers}, "raw": raw,
            "raw_phases": {"rlreg": first["raw_phases_rlreg"], "trl": first["records"],
                           **{f"rlreg_beside_{p}": seg[p]["raw_phases_rlreg"] for p in peers[1:]},
                           **{p: seg[p]["records"] for p in peers[1:]}}}


def _segment(peer: str, rlreg_seconds: list[float], phases: list[dict], records: list[dict],
             trl_threads: tuple[int, ...]) -> dict:
    """Medians of one peer's segment (its first step per thread setting and rlreg's first step dropped)."""
    by_threads = {t: [r for r in records if r["threads"] == t][1:] for t in trl_threads}
    per_threads = {t: median([r["seconds"] for r in recs]) for t, recs in by_threads.items()}
    best = min(per_threads, key=per_threads.get)
    rlreg = median(rlreg_seconds[1:])
    return {"rlreg": rlreg, "peer": per_threads[best], "ratio": per_threads[best] / rlreg, "threads": best,
            "raw_rlreg": rlreg_seconds[1:], "raw_phases_rlreg": phases, "records": records,
            "per_threads": {f"{peer}_{t}_threads": s for t, s in per_threads.items()},
            "raw_peer": {f"{peer}_{t}_threads": [r["seconds"] for r in by_threads[t]] for t in trl_threads},
            "phases_rlreg": {p: median([ph[p] for ph in phases[1:]]) for p in PHASES},
            "phases_peer": {"generate": median([r["generate"] for r in by_threads[best]]),
                            "reward_loss_update": median([r["seconds"] - r["generate"] for r in by_threads[best]])}}


def run(args: BenchArgs) -> dict:
    from benchmarks import inside

    sizes = ["tiny"] if args.quick else ["1M", "25M", "100M"]
    dtypes = ("float32",) if args.quick else DTYPES
    batch, group = (2, 4) if args.quick else (8, 16)
    load_before = load_average()
    start_ray()
    inside.ship_by_value()
    default_threads = (1,) if args.quick else (1, 2)
    per_size = {}
    # Largest first: a long run that dies (out of memory on this shared machine) still leaves the
    # slowest rows in the partial file, written after every row.
    partial = Path(tempfile.gettempdir(), "rlreg-bench", "step_partial.json")
    for size in sorted(sizes, key=lambda s: -SIZES[s]["hidden"] * SIZES[s]["layers"]):
        for dtype in dtypes:
            size_args = dataclasses.replace(args, repeats=min(args.repeats, REPEATS_BY_SIZE.get(size, args.repeats)))
            with workdir() as root:  # one model at a time on disk
                per_size[f"{size}/{dtype}"] = measure_size(size, size_args, batch, group, root,
                                                           THREADS_BY_SIZE.get(size, default_threads), dtype)
            if not args.quick:
                write_result(_result(per_size, sizes, dtypes, args, batch, group, default_threads, load_before),
                             partial, False)
    per_size = {k: per_size[k] for k in (f"{s}/{d}" for s in sizes for d in dtypes)}
    return _result(per_size, sizes, dtypes, args, batch, group, default_threads, load_before, table=True)


def _result(per_size: dict, sizes, dtypes, args: BenchArgs, batch: int, group: int, default_threads,
            load_before, table: bool = False) -> dict:
    from benchmarks.trl_peer import NOTES

    headline = list(per_size)[-1]
    config = {"sizes": sizes, "dtypes": list(dtypes), "peers": list(PEERS), "batch_inputs": batch,
              "group_size": group, "number_tokens": 8,
              "data": "sklearn:diabetes rows as text (data.input=text), 40-50 prompt tokens",
              "advantage": "grpo (both)", "kl": 0, "ppo_epochs": 1,
              "dtype": "per row (keys SIZE/DTYPE): rlreg model.dtype (vLLM engine in it, DeepSpeed bf16 with fp32 "
                       "master weights for bfloat16), TRL's model loaded in the same dtype with bf16=True for "
                       "bfloat16 rows and bf16=False for float32 rows",
              "repeats": args.repeats, "warmup_steps": 1,
              "repeats_by_size": {s: min(args.repeats, REPEATS_BY_SIZE.get(s, args.repeats)) for s in sizes},
              "trl_torch_threads_tried": {s: list(THREADS_BY_SIZE.get(s, default_threads)) for s in sizes},
              "reduced_for_100M": "to keep the run under an hour on 2 shared cores: 2 timed steps per side "
                                  "and peer (3 below), and only torch threads = 2 tried for the peers (1 and 2 "
                                  "below); sizes measured largest first",
              "torch_threads": "rlreg: ray.torch_threads default in every actor; TRL: each setting tried, "
                               "fastest counted",
              "rlreg": "RLRunner.step: 1 vLLM rollout actor, 2 reward actors, 1 DeepSpeed ZeRO-1 learner "
                       "(shared-prefix forward), weight sync every step",
              "peer": "trl.GRPOTrainer (transformers generate, use_cpu, gradient checkpointing off, beta=0)",
              "peer_trl_vllm": "trl.GRPOTrainer with use_vllm=True, vllm_mode='colocate' (in-process vLLM engine, "
                               "weight sync every step; see notes for the one call replaced)",
              "ratio_per_peer": "peer seconds per step over the seconds of the rlreg steps interleaved with that "
                                "peer (seconds_per_step.rlreg_beside_PEER)"}
    medians = {key: {k: r[k] for k in ("size", "dtype", "seconds_per_step", "phases", "params", "ratio", "ratios",
                                       "trl_threads", "peer_threads", "rlreg_threads", "learner_bf16")}
               for key, r in per_size.items()}
    rows = [[r["size"], r["dtype"], r["params"], *[x for p in PEERS for x in
             (r["seconds_per_step"][f"rlreg_beside_{p}"], r["seconds_per_step"][p], r["ratios"][p])]]
            for r in per_size.values()]
    if table:
        print_table("step: seconds per RL step (median)",
                    ["size", "dtype", "params", "rlreg s", "TRL s", "ratio", "rlreg s", "TRL-vLLM s", "ratio"],
                    rows)
    for key, r in per_size.items() if table else ():
        print(f"  {key} rlreg phases: " + ", ".join(f"{k[5:]} {v:.3g}s" for k, v in r["phases"]["rlreg"].items())
              + "".join(f" | {p} generate {r['phases'][p]['generate']:.3g}s, rest "
                        f"{r['phases'][p]['reward_loss_update']:.3g}s" for p in PEERS))
    return result(NAME, config, medians, {k: r["raw"] for k, r in per_size.items()}, per_size[headline]["ratio"],
                  f"TRL (transformers generate) seconds per step over rlreg seconds per step at {headline}, same "
                  f"dtype both sides", load_before, notes=NOTES, target=3.0,
                  ratios={k: r["ratios"] for k, r in per_size.items()},
                  min_ratio={p: min(r["ratios"][p] for r in per_size.values()) for p in PEERS},
                  raw_phases={k: r["raw_phases"] for k, r in per_size.items()})

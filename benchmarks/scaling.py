"""scaling: RLRunner.step seconds vs group size G ∈ {4, 8, 16, 32} (batch 8), batch size
B ∈ {4, 8, 16} (G 16), rollout engines (1 vs 2), torch threads per actor (all cores vs 1), and
the OpenMP wait policy of the actors (rlreg's PASSIVE vs OpenMP's default spin-wait: the
before/after of the fix in rlreg.actors.session.actor_env) — is the cost linear in the number of
samples B·G, what is fixed per step, and what do the settings buy on this 2-core machine?

One set of actors serves the G/B sweep (group size and batch are read per step); the other
settings each have their own runner, stepped in the same rounds, every setting once per round in
alternating order, so machine-load drift hits all alike. The before/after of the fix is also
measured at ≈ 1 M parameters, where per-op overheads dominate."""
from __future__ import annotations

import contextlib
import copy
import math
import subprocess
import sys
import time
from typing import Iterator
from unittest import mock

import numpy as np

from benchmarks.common import BenchArgs, load_average, median, print_table, result
from benchmarks.fixtures import make_task, parameter_count, start_ray, workdir

NAME = "scaling"
REQUIRES: tuple[str, ...] = ()
PHASES = ("time_rollout", "time_reward", "time_learn", "time_sync")


class SplitRollout:
    """A RolloutGroup view that deals one batch across all its engines (RolloutGroup.sample sends
    chunks of 256 inputs, so a batch of 8 lands on one engine)."""

    def __init__(self, group):
        self.group = group

    def sample(self, inputs, allowed, n, temperature):
        chunk = max(1, math.ceil(len(inputs["prompts"]) / len(self.group.workers)))
        return self.group.sample(inputs, allowed, n, temperature, chunk=chunk)

    def load_weights(self, ref):
        return self.group.load_weights(ref)

    def shutdown(self) -> None:
        self.group.shutdown()


def linear_fit(samples: list[int], seconds: list[float]) -> dict:
    """seconds ≈ fixed + per_sample × samples, with R² (is the cost linear?)."""
    x, y = np.asarray(samples, float), np.asarray(seconds, float)
    slope, intercept = np.polyfit(x, y, 1)
    fitted = intercept + slope * x
    ss_res, ss_tot = float(((y - fitted) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return {"fixed_s": float(intercept), "per_sample_s": float(slope),
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def make_runner(cfg, task, run_dir, before_fix: bool = False):
    from rlreg.train.rl import RLRunner

    if not before_fix:
        return RLRunner(cfg, task, task.model_dir, run_dir)
    # Before the fix: actors started without OMP_WAIT_POLICY (OpenMP's default spin-wait).
    with mock.patch("rlreg.actors.session.actor_env", return_value={}):
        return RLRunner(cfg, task, task.model_dir, run_dir)


def setting(runner, group: int, batch: int, rollout=None):
    """One RL step of `runner` at this group size / batch (and rollout view), timed."""
    from rlreg.data.batches import BatchCursor

    def step() -> dict:
        runner.cfg.rl.group_size = group
        if runner.cursor.batch_size != batch:
            runner.cursor = BatchCursor(len(runner.task.prompts["train"]), batch, runner.cfg.seed + 1)
        if rollout is not None:
            runner.rollout = rollout
        t0 = time.perf_counter()
        stats = runner.step()
        return {"seconds": time.perf_counter() - t0, **{p: stats[p] for p in PHASES}}

    return step


@contextlib.contextmanager
def busy_neighbour() -> Iterator[None]:
    """One CPU-bound process beside the step, at the actors' own niceness (equal priority, like
    another user's actor beside Ray's default niceness 15): a controlled version of what this
    shared machine usually has. Bounded: killed on exit."""
    import os

    niceness = os.environ.get("RAY_worker_niceness", "15")  # what start_ray gave the actors
    proc = subprocess.Popen(["nice", "-n", niceness, sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        yield
    finally:
        proc.kill()
        proc.wait()


def beside_busy(step):
    def call() -> dict:
        with busy_neighbour():
            return step()
    return call


def rounds(configs: dict, repeats: int) -> dict[str, list[dict]]:
    names = list(configs)
    records: dict[str, list[dict]] = {n: [] for n in names}
    for name in names:  # warm-up round, not recorded
        configs[name]()
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            records[name].append(configs[name]())
    return records


def summarize(records: dict[str, list[dict]]) -> dict:
    return {n: {k: median([rec[k] for rec in recs]) for k in ("seconds", *PHASES)} for n, recs in records.items()}


def fix_ab(size: str, args: BenchArgs, root, group: int, batch: int) -> dict[str, list[dict]]:
    """Only the before/after of the OpenMP fix, at another model size."""
    cfg, task = make_task(size, root, [f"rl.group_size={group}", f"rl.batch_size={batch}"])
    runners = {"after fix": make_runner(cfg, task, root / f"after-{size}"),
               "before fix": make_runner(cfg, task, root / f"before-{size}", before_fix=True)}
    configs = {n: setting(r, group, batch) for n, r in runners.items()}
    configs.update({f"{n}, busy neighbour": beside_busy(setting(r, group, batch)) for n, r in runners.items()})
    try:
        return rounds(configs, args.repeats)
    finally:
        for r in runners.values():
            r.shutdown()


def run(args: BenchArgs) -> dict:
    size = "tiny" if args.quick else "25M"
    groups, batches = ((2, 4), (2, 4)) if args.quick else ((4, 8, 16, 32), (4, 8, 16))
    base_g, base_b = (4, 2) if args.quick else (16, 8)
    load_before = load_average()
    start_ray(num_cpus=8)  # four runners' actors (logical CPUs; the phases run one at a time)
    with workdir() as root:
        cfg, task = make_task(size, root)
        params = parameter_count(task)
        main = make_runner(cfg, task, root / "rl-main")
        cfg_two, cfg_t1 = copy.deepcopy(cfg), copy.deepcopy(cfg)
        cfg_two.rl.rollout_workers = 2
        cfg_t1.ray.torch_threads = 1
        two, one_thread = make_runner(cfg_two, task, root / "rl-two"), make_runner(cfg_t1, task, root / "rl-t1")
        before = make_runner(copy.deepcopy(cfg), task, root / "rl-before", before_fix=True)
        chunked_two, split_two = two.rollout, SplitRollout(two.rollout)
        configs = {f"G={g},B={base_b}": setting(main, g, base_b) for g in groups}
        configs.update({f"G={base_g},B={b}": setting(main, base_g, b) for b in batches if b != base_b})
        configs["engines=2 (RLRunner as is)"] = setting(two, base_g, base_b, chunked_two)
        configs["engines=2 (batch split across engines)"] = setting(two, base_g, base_b, split_two)
        configs["threads=1 per actor"] = setting(one_thread, base_g, base_b)
        configs["before fix"] = setting(before, base_g, base_b)
        configs["after fix, busy neighbour"] = beside_busy(setting(main, base_g, base_b))
        configs["before fix, busy neighbour"] = beside_busy(setting(before, base_g, base_b))
        try:
            records = rounds(configs, args.repeats)
        finally:
            for runner in (main, two, one_thread, before):
                runner.shutdown()
        small = None if args.quick else "1M"
        ab_small = fix_ab(small, args, root, base_g, base_b) if small else {}
    medians = summarize(records)
    base_name = f"G={base_g},B={base_b}"
    base = medians[base_name]["seconds"]
    g_names = [f"G={g},B={base_b}" for g in groups]
    b_names = [f"G={base_g},B={b}" for b in batches]
    samples_g, samples_b = [g * base_b for g in groups], [base_g * b for b in batches]
    fits = {"group_size": linear_fit(samples_g, [medians[n]["seconds"] for n in g_names]),
            "batch_size": linear_fit(samples_b, [medians[n]["seconds"] for n in b_names]),
            "group_size_learn": linear_fit(samples_g, [medians[n]["time_learn"] for n in g_names]),
            "group_size_rollout": linear_fit(samples_g, [medians[n]["time_rollout"] for n in g_names])}
    rows = [[n, m["seconds"], m["time_rollout"], m["time_learn"], m["time_sync"], base / m["seconds"]]
            for n, m in medians.items()]
    print_table(f"scaling: RLRunner.step seconds (median), {params / 1e6:.1f} M params, defaults unless said "
                "(torch threads = all cores, OMP_WAIT_POLICY=PASSIVE)",
                ["setting", "step s", "rollout", "learn", "sync", "speed vs base"], rows)
    for key, fit in fits.items():
        print(f"  {key}: {fit['fixed_s']:.3g} s fixed + {fit['per_sample_s'] * 1e3:.3g} ms per sample "
              f"(R² {fit['r2']:.3f})")
    fix = {size: {"quiet": {"before_s": medians["before fix"]["seconds"], "after_s": base},
                  "busy_neighbour": {"before_s": medians["before fix, busy neighbour"]["seconds"],
                                     "after_s": medians["after fix, busy neighbour"]["seconds"]}}}
    if ab_small:
        m = summarize(ab_small)
        medians.update({f"{small} {n}": v for n, v in m.items()})
        fix[small] = {"quiet": {"before_s": m["before fix"]["seconds"], "after_s": m["after fix"]["seconds"]},
                      "busy_neighbour": {"before_s": m["before fix, busy neighbour"]["seconds"],
                                         "after_s": m["after fix, busy neighbour"]["seconds"]}}
    for s, by_condition in fix.items():
        for condition, f in by_condition.items():
            f["speedup"] = f["before_s"] / f["after_s"]
            print(f"  fix at {s}, {condition.replace('_', ' ')}: {f['before_s']:.3g} s → {f['after_s']:.3g} s "
                  f"per step ({f['speedup']:.2f}x)")
    config = {"size": size, "params": params, "groups": list(groups), "batches": list(batches),
              "base": {"group_size": base_g, "batch_size": base_b}, "number_tokens": 8,
              "torch_threads": "ray.torch_threads default (all cores) unless the setting says 1",
              "omp_wait_policy": "PASSIVE (rlreg.actors.session.actor_env) unless the setting says before fix",
              "busy_neighbour": "one `python -c 'while True: pass'` process during those steps, at the Ray "
                                "workers' niceness (equal priority)",
              "fix_ab_sizes": list(fix), "repeats": args.repeats, "warmup_rounds": 1, "advantage": "grpo"}
    raw = {**records, **{f"{small} {n}": v for n, v in ab_small.items()}}
    return result(NAME, config, medians, raw, fix[size]["busy_neighbour"]["speedup"],
                  f"step seconds before the OpenMP fix over after, at {size} (G={base_g}, B={base_b}), with one "
                  "busy neighbour process (fix_before_after also has the as-is numbers)", load_before,
                  linear_fits=fits, fix_before_after=fix)

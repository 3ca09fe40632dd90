"""Where one RL step spends its time: runs RLRunner.step a few times with cProfile switched on
inside the learner rank and the rollout worker (through Ray's __ray_call__), then prints the
per-phase timings and each actor's top functions by cumulative time.

    python -m benchmarks.profile_step --size 25M --steps 3 [--top 25] [rl.group_size=16 ...]
"""
from __future__ import annotations

import argparse
import time

from benchmarks.common import median, prepare_process
from benchmarks.fixtures import make_task, start_ray, workdir


def profiler_on(actor) -> bool:
    import cProfile

    actor._bench_profile = cProfile.Profile()
    actor._bench_profile.enable()
    return True


def profiler_report(actor, top: int) -> str:
    import io
    import pstats

    actor._bench_profile.disable()
    out = io.StringIO()
    pstats.Stats(actor._bench_profile, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    import sys

    import ray
    import ray.cloudpickle

    from rlreg.train.rl import RLRunner

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="25M")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    prepare_process()
    start_ray()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with workdir() as root:
        cfg, task = make_task(args.size, root, args.overrides)
        runner = RLRunner(cfg, task, task.model_dir, root / "rl")
        try:
            runner.step()  # warm-up
            actors = {"learner": runner.learner.ranks[0], "rollout": runner.rollout.workers[0]}
            ray.get([a.__ray_call__.remote(profiler_on) for a in actors.values()])
            stats, walls = [], []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                stats.append(runner.step())
                walls.append(time.perf_counter() - t0)
            reports = {n: ray.get(a.__ray_call__.remote(profiler_report, args.top)) for n, a in actors.items()}
        finally:
            runner.shutdown()
    print(f"step wall s: median {median(walls):.3f} of {[round(w, 3) for w in walls]}")
    for key in ("time_rollout", "time_reward", "time_learn", "time_sync"):
        print(f"  {key}: median {median([s[key] for s in stats]):.3f}")
    for name, report in reports.items():
        print(f"\n===== {name} actor, cProfile over {args.steps} steps =====\n{report}")


if __name__ == "__main__":
    main()

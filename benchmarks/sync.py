"""sync: one weight sync by each route of rlreg.actors.weight_sync, side by side, vs one in-memory
copy of the state dict ({k: v.clone()} inside the learner actor), at ≈ 1 M, 25 M and 100 M parameters:

- object_store: LearnerGroup.publish_weights (rank 0's weights as numpy, left in Ray's object
  store) → RolloutGroup.load_weights (every engine reads them and runs vLLM's reload_weights
  through rlreg's worker extension, then drops its prefix cache);
- collective: learner rank 0 broadcasts the parameters in sync.bucket_mb buckets over a gloo group
  with the engine worker, which loads each bucket as it arrives (the group formed once, untimed).

A second, instrumented pass through the same actors splits the time: publish (gather + numpy on
rank 0), transfer (object-store write on the learner + read on the engine), reload_weights,
prefix-cache reset. Ratio = copy seconds / sync seconds (target ≥ 0.5: sync within 2× of a copy)."""
from __future__ import annotations

import time

from benchmarks.common import BenchArgs, interleaved, load_average, median, print_table, result, timed
from benchmarks.fixtures import make_task, parameter_count, start_ray, workdir

NAME = "sync"
REQUIRES: tuple[str, ...] = ()
SPLIT = ("publish", "transfer", "reload_weights", "prefix_cache_reset")


def measure_size(size: str, args: BenchArgs, root) -> dict:
    import ray

    from rlreg.actors.config import SyncConfig
    from rlreg.actors.learner import LearnerGroup
    from rlreg.actors.rollout import RolloutGroup
    from rlreg.actors.weight_sync import CollectiveSync

    from benchmarks import inside

    cfg, task = make_task(size, root)
    learner = LearnerGroup(task.model_dir, cfg.learner, cfg.rl.lr, 100, cfg.ray)
    rollout = RolloutGroup(task.model_dir, cfg.engine, cfg.model.max_positions, cfg.ray, workers=1)
    rank, worker = learner.ranks[0], rollout.workers[0]
    splits: list[dict] = []

    def object_store_sync() -> float:  # RLRunner.sync with sync.route=object_store
        return timed(lambda: rollout.load_weights(learner.publish_weights()))

    collective = CollectiveSync(SyncConfig(route="collective"))

    def collective_sync() -> float:  # RLRunner.sync with sync.route=collective
        return timed(lambda: collective.sync(learner, rollout))

    def copy() -> float:
        return ray.get(rank.__ray_call__.remote(inside.learner_copy_seconds))

    def instrumented() -> float:
        t0 = time.perf_counter()
        published = ray.get(rank.__ray_call__.remote(inside.learner_publish))
        loaded = ray.get(worker.__ray_call__.remote(inside.rollout_load, published["ref"]))
        seconds = time.perf_counter() - t0
        splits.append({"publish": published["publish"], "transfer": published["put"] + loaded["get"],
                       "reload_weights": loaded["reload_weights"],
                       "prefix_cache_reset": loaded["prefix_cache_reset"], "total": seconds})
        return seconds

    try:
        raw = interleaved({"sync": object_store_sync, "collective_sync": collective_sync, "copy": copy,
                           "instrumented_sync": instrumented}, args.repeats)
        sent = collective.last["sync_bytes"]
    finally:
        rollout.shutdown()
        learner.shutdown()
    splits = splits[-args.repeats:]  # drop the warm-up round
    seconds = {k: median(v) for k, v in raw.items()}
    return {"params": parameter_count(task), "seconds": seconds, "ratio": seconds["copy"] / seconds["sync"],
            "collective_ratio": seconds["copy"] / seconds["collective_sync"], "bytes": sent,
            "bytes_per_s": {"object_store": sent / seconds["sync"], "collective": sent / seconds["collective_sync"]},
            "split": {k: median([s[k] for s in splits]) for k in SPLIT}, "raw": raw, "raw_split": splits}


def run(args: BenchArgs) -> dict:
    from benchmarks import inside

    sizes = ["tiny"] if args.quick else ["1M", "25M", "100M"]
    load_before = load_average()
    start_ray()
    inside.ship_by_value()
    with workdir() as root:
        per_size = {size: measure_size(size, args, root) for size in sizes}
    headline = "25M" if "25M" in per_size else sizes[-1]
    rows = [[s, r["params"], r["seconds"]["sync"], r["seconds"]["collective_sync"], r["seconds"]["copy"], r["ratio"],
             r["collective_ratio"], *(r["split"][k] for k in SPLIT)] for s, r in per_size.items()]
    print_table("sync: seconds (median)", ["size", "params", "object_store", "collective", "copy", "copy/os",
                                           "copy/coll", *SPLIT], rows)
    config = {"sizes": sizes, "rollout_workers": 1, "learner_ranks": 1, "zero_stage": 1, "dtype": "float32",
              "repeats": args.repeats, "warmup_rounds": 1,
              "sync": "RolloutGroup.load_weights(LearnerGroup.publish_weights()) (RLRunner.sync, sync.route=object_store)",
              "collective_sync": "CollectiveSync.sync (RLRunner.sync, sync.route=collective, sync.bucket_mb=64, gloo)",
              "copy": "{k: v.clone() for k, v in state_dict().items()} inside the learner actor",
              "split": "instrumented replica of the same path inside the same actors (Ray __ray_call__)"}
    medians = {s: {"seconds": r["seconds"], "ratio": r["ratio"], "collective_ratio": r["collective_ratio"],
                   "bytes": r["bytes"], "bytes_per_s": r["bytes_per_s"], "split": r["split"], "params": r["params"]}
               for s, r in per_size.items()}
    return result(NAME, config, medians, {s: r["raw"] for s, r in per_size.items()}, per_size[headline]["ratio"],
                  f"copy seconds over sync seconds at {headline} (>= 0.5 means sync within 2x of one copy)",
                  load_before, target=0.5, raw_split={s: r["raw_split"] for s, r in per_size.items()})

"""Functions run inside rlreg's own actors (through Ray's `actor.__ray_call__`) to time the parts of
a weight sync where they happen, without changing the actor classes. Shipped to the actors by
value (`ship_by_value`), so the actors need not import the benchmarks package."""
from __future__ import annotations

import time


def ship_by_value() -> None:
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def torch_threads(_actor) -> int:
    """The torch thread count an actor really runs with."""
    import torch

    return torch.get_num_threads()


def learner_copy_seconds(rank) -> float:
    """One in-memory copy of the learner's state dict: the floor a sync is compared with."""
    import torch

    with torch.no_grad():
        t0 = time.perf_counter()
        copy = {k: v.detach().clone() for k, v in rank.engine.module.state_dict().items()}
        seconds = time.perf_counter() - t0
    del copy
    return seconds


def learner_publish(rank) -> dict:
    """LearnerRank.publish_weights (gather on rank 0 + numpy), then the object-store write."""
    import ray

    t0 = time.perf_counter()
    weights = rank.publish_weights()
    t1 = time.perf_counter()
    ref = ray.put(weights)
    t2 = time.perf_counter()
    del weights
    return {"publish": t1 - t0, "put": t2 - t1, "ref": [ref]}  # in a list: not resolved on return


def rollout_load(worker, boxed_ref: list) -> dict:
    """RolloutWorker.load_weights split into the object-store read, reload_weights and the reset."""
    import ray

    from rlreg.model.encoder import ENCODER_PREFIX

    from rlreg.model.engine_worker import pack_arrays

    t0 = time.perf_counter()
    arrays = ray.get(boxed_ref[0])
    t1 = time.perf_counter()
    packed = pack_arrays({k: v for k, v in arrays.items() if not k.startswith(ENCODER_PREFIX)})
    worker.engine.llm.collective_rpc("rlreg_load_weights", args=(packed,))  # what NumberEngine.load_weights runs
    t2 = time.perf_counter()
    worker.engine.llm.reset_prefix_cache()
    t3 = time.perf_counter()
    return {"get": t1 - t0, "reload_weights": t2 - t1, "prefix_cache_reset": t3 - t2}

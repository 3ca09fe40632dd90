"""Weight sync: the learner's current weights into every rollout engine, by one of two routes
(`sync.route`, rlreg.actors.config.SyncConfig):

- ObjectStoreSync: learner rank 0 returns its state dict into Ray's object store; each engine
  reads it there (zero-copy on one node) and loads it.
- CollectiveSync: learner rank 0 and the engine workers form a process group of their own
  (rlreg.model.weight_transfer); rank 0 broadcasts the parameters bucket by bucket and each engine
  loads them as they arrive. The group is rebuilt whenever a member changed (a rollout worker was
  replaced, the learner group restored). An engine that dies mid-sync is replaced, the group rebuilt
  and the sync redone once.

Both take the current learner and rollout groups at each call: either may have been replaced
since the last one. With LoRA (model.lora) both carry only the merged weights of the targeted
modules' parents, named and sized by the learner (LearnerRank.publish_weights / weight_specs;
rlreg.model.lora.LoraAdapters.sync_tensors says why the rest can stay as the engines loaded it)."""
from __future__ import annotations

import sys
from typing import Any

import ray
import ray.exceptions

from rlreg import device
from rlreg.actors.config import SyncConfig
from rlreg.actors.learner import LearnerGroup
from rlreg.actors.rollout import EngineLost, RolloutGroup
from rlreg.actors.session import ActorFailed, get_with_timeout
from rlreg.errors import RemoteTimeout
from rlreg.model.weight_transfer import SyncFailed, plan_buckets


def make_weight_sync(cfg: SyncConfig, takes_features: bool):
    route = cfg.resolved_route(takes_features)
    return CollectiveSync(cfg) if route == "collective" else ObjectStoreSync()


class ObjectStoreSync:
    route = "object_store"

    def sync(self, learner: LearnerGroup, rollout: RolloutGroup) -> list[int]:
        return rollout.load_weights(learner.publish_weights())

    def close(self) -> None:
        pass


class CollectiveSync:
    route = "collective"

    def __init__(self, cfg: SyncConfig):
        self.cfg = cfg
        self._members: tuple | None = None  # actor ids of the group's members when it was built
        self._plan: tuple[list, list[list[int]]] | None = None  # (tensor specs, buckets)
        self.last: dict = {}  # the last sync's measurements (bytes, seconds, buckets)

    def sync(self, learner: LearnerGroup, rollout: RolloutGroup) -> list[int]:
        """Every engine holds the learner's current weights when this returns; their versions."""
        for attempt in range(2):
            self._ensure_group(learner, rollout)
            failed = self._transfer(learner, rollout)
            if failed is None:
                return self._versions
            if attempt == 1:
                raise ActorFailed(f"weight sync failed again after rebuilding its group: {failed}")
            print(f"rlreg: weight sync failed ({failed}); rebuilding its group and sending again",
                  file=sys.stderr, flush=True)
            self._members = None  # rebuild the group next attempt
        raise AssertionError("unreachable")

    def _ensure_group(self, learner: LearnerGroup, rollout: RolloutGroup) -> None:
        members = tuple(a._actor_id for a in [learner.ranks[0], *rollout.workers])
        if members == self._members:
            return
        timeout = learner.ray_cfg.actor_start_timeout_s
        if self._plan is None:
            specs = get_with_timeout(learner.ranks[0].weight_specs.remote(), timeout, "learner weight specs")
            self._plan = (specs, plan_buckets(specs, int(self.cfg.bucket_mb * 1024**2)))
        self._close(learner, rollout)
        host, port = get_with_timeout(learner.ranks[0].rendezvous_address.remote(), timeout,
                                      "learner rank 0's address for the weight group")
        size = 1 + len(rollout.workers)
        slots = get_with_timeout([a.gpu_slot.remote() for a in (learner.ranks[0], *rollout.workers)], timeout,
                                 "the weight group members' GPUs")
        shared = any(slot[1] and slot == slots[0] for slot in slots[1:])
        self.backend = device.weight_sync_backend(shares_a_gpu=shared)
        refs = [learner.ranks[0].open_weight_group.remote(host, port, size, self.cfg.timeout_s, self.backend)]
        refs += [w.open_weight_group.remote(host, port, 1 + i, size, self.cfg.timeout_s, self.backend)
                 for i, w in enumerate(rollout.workers)]
        # Members join concurrently; each construction waits for all within sync.timeout_s.
        get_with_timeout(refs, self.cfg.timeout_s + 60, f"forming the weight group ({size} members at {host}:{port})")
        self._members = members

    def _close(self, learner: LearnerGroup, rollout: RolloutGroup) -> None:
        """Drop any old group on the members that are still alive (a dead one has nothing to close)."""
        refs = [learner.ranks[0].close_weight_group.remote()] + [w.close_weight_group.remote() for w in rollout.workers]
        for ref in refs:
            try:
                get_with_timeout(ref, 60, "closing the old weight group")
            except (ray.exceptions.RayActorError, RemoteTimeout):
                pass  # a replaced or dying member: the rebuilt group will not include it

    def _transfer(self, learner: LearnerGroup, rollout: RolloutGroup) -> str | None:
        """One broadcast to every engine; None on success, else what failed (after replacing the
        engines that died, so the next attempt can run)."""
        specs, buckets = self._plan
        send = [rank.send_weights.remote(buckets) for rank in learner.ranks]
        receive = [w.receive_weights.remote(specs, buckets) for w in rollout.workers]
        limit = self.cfg.timeout_s * (len(buckets) + 1)  # each bucket's wait is itself limited
        problems = []
        dead = []
        for w, ref in enumerate(receive):
            try:
                receive[w] = get_with_timeout(ref, limit, f"rollout worker {w} receiving weights")
            except (ray.exceptions.RayActorError, EngineLost, RemoteTimeout) as err:
                dead.append(w)
                problems.append(f"rollout worker {w}: {_reason(err)}")
            except SyncFailed as err:
                problems.append(f"rollout worker {w}: {_reason(err)}")
        try:
            stats = learner.wait(send, "learner weight broadcast")  # a dead rank: LearnerLost, as elsewhere
            self.last = stats[0]
        except SyncFailed as err:
            problems.append(f"learner rank 0: {_reason(err)}")
        for w in dead:
            rollout.replace_worker(w, f"weight sync: rollout worker {w} failed", load_weights=False)
        if problems:
            return "; ".join(problems)
        self._versions = receive
        return None

    def close(self, learner: LearnerGroup | None = None, rollout: RolloutGroup | None = None) -> None:
        if learner is not None and rollout is not None and self._members is not None:
            self._close(learner, rollout)
        self._members = None


def _reason(err: Any) -> str:
    text = str(getattr(err, "cause", None) or err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1][:300] if text else ''}"

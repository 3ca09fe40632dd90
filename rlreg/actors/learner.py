"""LearnerGroup: the driver's handle on W DeepSpeed learner ranks (rlreg.actors.learner_rank).

Every rank call goes through `call`: it shards a LearnerBatch over the ranks when given one, waits
with a time limit and turns a dead or hung rank into LearnerLost; callers merge the per-rank
results (merge_stats for stats, np.concatenate for arrays)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import ray
import ray.exceptions
from ray.util.placement_group import get_current_placement_group, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlreg import device
from rlreg.actors.config import LearnerConfig, RayConfig
from rlreg.actors.learner_rank import LearnerRank
from rlreg.actors.placement import ActorPlacement, SharedPlacement
from rlreg.actors import session
from rlreg.actors.session import ActorFailed, get_with_timeout, require_resources, wait_for_actors
from rlreg.algos.experience import LearnerBatch, merge_stats  # noqa: F401 (merge_stats: the callers' import)
from rlreg.errors import RemoteTimeout
from rlreg.io import replace_dir
from rlreg.model.checkpoint import copy_model_extras
from rlreg.model.config import LoraConfig
from rlreg.model.lora import ADAPTER_DIR, check_learner_supports


class LearnerLost(ActorFailed):
    """A learner rank died or hung: the group's state is gone (restore it from a checkpoint)."""


def _enclosing_placement_group():
    """The placement group this process's children are captured into (a Tune trial's), else None."""
    if not ray.get_runtime_context().should_capture_child_tasks_in_placement_group:
        return None
    return get_current_placement_group()


class LearnerGroup:
    """Driver-side handle on W learner ranks: shards batches, calls the ranks together."""

    def __init__(self, model_dir: str | Path, cfg: LearnerConfig, lr: float, total_steps: int, ray_cfg: RayConfig,
                 seed: int = 0, shared: SharedPlacement | None = None, lora: LoraConfig | None = None):
        """`shared`: a placement group the caller reserved for the ranks and engines together
        (ray.colocate); else the group reserves one bundle per rank itself. `lora` (model.lora):
        train adapters on the frozen model_dir (None: every weight)."""
        check_learner_supports(lora, cfg.zero_stage)  # before anything is reserved or started
        self.cfg = cfg
        self.ray_cfg = ray_cfg
        self.lora = lora
        gpus = ray_cfg.learner_gpus if device.has_cuda() else 0.0
        self._places = shared.plan.learners if shared is not None else [
            ActorPlacement(r, ray_cfg.learner_cpus, gpus, dict(ray_cfg.learner_resources)) for r in range(cfg.world_size)]
        if shared is None:
            require_resources(sum(p.num_cpus for p in self._places), sum(p.num_gpus for p in self._places),
                              f"the learner group ({cfg.world_size} rank(s))")
        # Inside a Ray Tune trial, the trial's placement group already holds the ranks' resources
        # (rlreg.tune.sweep sizes it); a group of our own would wait for what the trial reserved.
        self._enclosing = _enclosing_placement_group() if shared is None else None
        self._owns_placement = shared is None and self._enclosing is None
        self.placement = shared.group if shared is not None else None
        self.ranks: list = []
        try:
            self._start(model_dir, lr, total_steps, seed)
        except BaseException:
            # Ranks that started and a reserved placement group would otherwise hold the session's
            # CPUs until it ends, and every later start in it would wait for them.
            self.shutdown()
            raise

    def _start(self, model_dir, lr: float, total_steps: int, seed: int) -> None:
        cfg, ray_cfg = self.cfg, self.ray_cfg
        if self._owns_placement:
            # One bundle per rank; PACK keeps ranks together when they fit, spreads them when not.
            bundles = [{"CPU": p.num_cpus, **p.resources, **({"GPU": p.num_gpus} if p.num_gpus else {})}
                       for p in self._places]
            self.placement = placement_group(bundles, strategy="PACK")
            get_with_timeout(self.placement.ready(), ray_cfg.actor_start_timeout_s,
                             f"reserving {cfg.world_size} learner bundle(s) {bundles[0]}")
        elif self._enclosing is not None:
            self.placement = self._enclosing
        actor_cls = ray.remote(LearnerRank)
        # session.actor_env looked up at call time: benchmarks/scaling.py stands in for it there.
        self.ranks = [
            actor_cls.options(
                num_cpus=place.num_cpus, num_gpus=place.num_gpus, resources=dict(place.resources),
                runtime_env={"env_vars": session.actor_env()}, scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement, placement_group_bundle_index=-1 if self._enclosing is not None else place.bundle),
            ).remote(r, cfg.world_size, str(model_dir), cfg, lr, total_steps, ray_cfg.torch_threads, seed, self.lora)
            for r, place in enumerate(self._places)
        ]
        # The ranks meet (torch.distributed's TCP store) on rank 0's node, which may not be this one:
        # rank 0 names its node's IP and a free port there (on one machine, a local address).
        addr, port = wait_for_actors(self.ranks[0].rendezvous_address.remote(), ray_cfg.actor_start_timeout_s,
                                     "starting DeepSpeed learner rank 0")
        wait_for_actors([r.connect.remote(addr, port) for r in self.ranks], ray_cfg.actor_start_timeout_s,
                        f"starting {cfg.world_size} DeepSpeed learner rank(s) (meeting at {addr}:{port})")

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def call(self, method: str, *args: Any, batch: LearnerBatch | None = None, what: str = "") -> list[Any]:
        """LearnerRank.`method` on every rank at once; per-rank results in rank order. With `batch`,
        rank r gets its contiguous shard as the first argument (`batch.shard_sizes(world_size)` are
        the weights for merge_stats; LearnerBatch.shards sets each shard's loss weight, micro-batch
        passes and, for a rank left without rows, its stand-in row); without, every rank gets the
        same arguments."""
        if batch is None:
            refs = [getattr(rank, method).remote(*args) for rank in self.ranks]
        else:
            refs = [getattr(rank, method).remote(shard, *args)
                    for rank, shard in zip(self.ranks, batch.shards(self.world_size, self.cfg.micro_batch_size))]
        return self.wait(refs, what or f"learner {method}")

    def wait(self, refs: list, what: str) -> list[Any]:
        """Results of calls to the ranks (refs), each wait time-limited. A dead or hung rank loses the
        whole group's state (its peers block in collectives), so both become LearnerLost for the RL
        loop to restore from."""
        try:
            return get_with_timeout(refs, self.ray_cfg.call_timeout_s, what)
        except ray.exceptions.RayActorError as err:
            raise LearnerLost(f"a DeepSpeed learner rank died during {what} ({type(err).__name__})") from err
        except RemoteTimeout as err:
            raise LearnerLost(f"{err} (a DeepSpeed learner rank hung)") from err

    def publish_weights(self):
        """ObjectRef of rank 0's weights (left in the object store for the engines to read). Waits on
        every rank's small status value, so a dead rank surfaces here as LearnerLost and not later,
        in the engines, as a broken weights object."""
        status, weights = zip(*[r.publish.options(num_returns=2).remote() for r in self.ranks])
        self.wait(list(status), "learner weight gather")
        return weights[0]

    def save_model(self, out_dir: Path, extras_from: Path) -> Path:
        """The current model as a complete model directory at out_dir, swapped in whole: the
        learner writes the weights into a temporary directory, the tokenizer and rlreg's metadata
        come from `extras_from` (the directory the training started from)."""
        tmp = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash: start the directory afresh
        self.call("save_model", str(tmp), what="saving the model")
        copy_model_extras(extras_from, tmp)
        if self.lora is None:
            # A start model saved by a LoRA run holds adapters for its own base, not this model.
            shutil.rmtree(tmp / ADAPTER_DIR, ignore_errors=True)
        return replace_dir(tmp, out_dir)

    # What rlreg.train.checkpoints (and its test doubles) call on a learner.
    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        self.call("save_checkpoint", ckpt_dir, tag, client_state, what="saving a checkpoint")

    def load_checkpoint(self, ckpt_dir: str, tag: str) -> dict:
        return self.call("load_checkpoint", ckpt_dir, tag, what="loading a checkpoint")[0]

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        if self._owns_placement and self.placement is not None:
            remove_placement_group(self.placement)
            self._owns_placement = False  # shutdown may be called again (idempotent)


"""LearnerRank: one DeepSpeed engine rank as a Ray actor; LearnerGroup drives W of them.

Ranks talk over torch.distributed (gloo on CPU, nccl on GPU); DeepSpeed averages gradients, so
each rank trains on its shard of the batch. Rank 0 publishes weights (HF names → numpy)."""
from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlreg import device
from rlreg.actors.session import ActorFailed
from rlreg.errors import ConfigError
from rlreg.model.encoder import ENCODER_PREFIX

# The only non-tensor types DeepSpeed 0.19.8's checkpoints of rlreg's runs hold (ZeRO 0-3, fp32/bf16;
# listed with torch.serialization.get_unsafe_globals_in_checkpoint): everything else is refused.
CHECKPOINT_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                      "deepspeed.runtime.zero.config.ZeroStageEnum",
                      "deepspeed.utils.tensor_fragment.fragment_address")


class LearnerLost(ActorFailed):
    """A learner rank died or hung: the group's state is gone (restore it from a checkpoint)."""


def cosine_with_warmup(total_steps: int, warmup_fraction: float, min_ratio: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LearnerRank:
    """Started in two phases: the actor (placed by Ray), then `connect` with rank 0's address, which
    only rank 0 can tell once Ray has put it on a node (LearnerGroup asks it: `rendezvous_address`)."""

    def __init__(self, rank: int, world_size: int, model_dir: str, cfg: LearnerConfig, lr: float,
                 total_steps: int, torch_threads: int = 0, seed: int = 0):
        self.rank = rank
        self._setup = (world_size, model_dir, cfg, lr, total_steps, torch_threads, seed)

    def rendezvous_address(self) -> tuple[str, int]:
        """(IP of this actor's node, a free port there): where the ranks meet when this is rank 0."""
        import ray

        host = ray.util.get_node_ip_address()
        return host, free_port(host)

    def connect(self, master_addr: str, master_port: int) -> int:
        """Join the group at rank 0's address and build this rank's DeepSpeed engine."""
        import torch

        world_size, model_dir, cfg, lr, total_steps, torch_threads, seed = self._setup
        rank = self.rank
        device.configure_torch_threads(torch_threads or None)
        # deepspeed.initialize otherwise falls back to MPI discovery (and fails on mpi4py).
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0")
        import deepspeed

        from rlreg.model.build import ModelMeta
        from rlreg.model.logprobs import NumberHead
        from rlreg.numbers.registry import build_number_tokenizer

        torch.manual_seed(seed)
        self.cfg = cfg
        self.model_dir = model_dir
        self._reference = None  # frozen copy of the starting model, loaded when a KL term needs it
        self.meta = ModelMeta.load(model_dir)
        self.number_tokenizer = build_number_tokenizer(self.meta.number_tokenizer)
        self.device = torch.device(device.device_name())
        model = load_policy(model_dir, self.meta)
        self.head = NumberHead(self.meta.number_token_ids, self.number_tokenizer.allowed, self.device)
        # A client torch optimizer: DeepSpeed's own AdamW would JIT-build fused_adam (~150 s).
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay,
                                      betas=tuple(cfg.betas or (0.9, 0.999)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, cosine_with_warmup(total_steps, cfg.warmup_fraction, cfg.min_lr_ratio))
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,  # rlreg passes whole shards; DeepSpeed only needs a number
            "gradient_accumulation_steps": 1,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": cfg.bf16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        deepspeed.init_distributed(dist_backend=device.dist_backend(), auto_mpi_discovery=False)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        # DeepSpeed reads checkpoints with torch.load(weights_only=False), which runs whatever a
        # pickle names; every load goes through this engine's checkpoint_engine, so restrict it.
        self.engine.checkpoint_engine.load = safe_torch_load
        return rank

    def ready(self) -> int:
        return self.rank

    def node_id(self) -> str:
        """The Ray node this rank runs on (for placement checks)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def step(self, objective: str, batch: dict, options: dict) -> dict:
        """One optimizer step on this rank's shard with the named objective (rlreg.train.objectives)."""
        from rlreg.train.objectives import OBJECTIVES

        self.engine.train()
        loss, stats = OBJECTIVES[objective](self, batch, options)
        self.engine.backward(loss)
        self.engine.step()
        stats["loss"] = float(loss.detach())
        stats["lr"] = float(self.scheduler.get_last_lr()[0])
        return stats

    def evaluate(self, objective: str, batch: dict, options: dict) -> dict:
        import torch

        from rlreg.train.objectives import OBJECTIVES

        self.engine.eval()
        with torch.no_grad():
            loss, stats = OBJECTIVES[objective](self, batch, options)
        stats["loss"] = float(loss)
        return stats

    def token_logprobs(self, batch: dict, temperature: float = 1.0) -> np.ndarray:
        """logp [N, L] of the given number-token sequences under the current policy."""
        import torch

        from rlreg.train.objectives import policy_logprobs

        self.engine.eval()
        with torch.no_grad():
            logp, _ = policy_logprobs(self, batch, temperature)
        return logp.cpu().numpy()

    def greedy(self, batch: dict) -> np.ndarray:
        """Constrained greedy decode by the learner's current model: number-token indices [N, L]."""
        import torch

        from rlreg.model.logprobs import greedy_numbers

        features = batch.get("features")
        if features is not None:
            features = torch.as_tensor(np.asarray(features), dtype=torch.float32, device=self.device)
        self.engine.eval()
        with torch.no_grad():
            return greedy_numbers(self.engine, self.head, batch["prompts"], self.meta.pad_id, features).cpu().numpy()

    def reference_logprobs(self, batch: dict, temperature: float = 1.0) -> np.ndarray:
        """logp [N, L] of the given tokens under the frozen starting model (for KL terms)."""
        import torch

        from rlreg.train.objectives import policy_logprobs

        if self._reference is None:
            self._reference = load_policy(self.model_dir, self.meta)
            self._reference.to(self.device).eval().requires_grad_(False)
        with torch.no_grad():
            logp, _ = policy_logprobs(self, batch, temperature, model=self._reference)
        return logp.cpu().numpy()

    def publish_weights(self) -> dict[str, np.ndarray] | None:
        """Full weights under HF names on rank 0 (every rank must call: ZeRO-3 gathers collectively)."""
        import deepspeed
        import torch

        module = self.engine.module
        params = list(module.parameters())
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if self.cfg.zero_stage == 3 \
            else _null_context()
        with gather, torch.no_grad():
            if self.rank != 0:
                return None
            lm, encoder = module.split_state(module.state_dict())
            # ZeRO 0-2: views of the live parameters, no copy of our own. Ray serialises the
            # returned arrays into the object store as the call returns, before this actor runs its
            # next task (the next optimizer step), so Ray's copy is the snapshot. ZeRO-3 frees the
            # gathered storage when the context exits, so there a copy must be taken inside it.
            snapshot = (lambda a: a.copy()) if self.cfg.zero_stage == 3 else (lambda a: a)
            out = {name: snapshot(t.detach().float().cpu().numpy()) for name, t in lm.items()}
            out.update({ENCODER_PREFIX + name: snapshot(t.detach().float().cpu().numpy())
                        for name, t in encoder.items()})
            return out

    def save_model(self, out_dir: str) -> None:
        """HF directory (safetensors, plus the feature encoder for vector input) from rank 0;
        every rank must call (ZeRO-3 gather)."""
        weights = self.publish_weights()
        if self.rank == 0:
            import torch

            from rlreg.model.encoder import encoder_spec, save_encoder

            module = self.engine.module
            lm = {k: torch.from_numpy(v) for k, v in weights.items() if not k.startswith(ENCODER_PREFIX)}
            module.lm.save_pretrained(out_dir, state_dict=lm, safe_serialization=True)
            if module.encoder is not None:
                encoder = {k[len(ENCODER_PREFIX):]: torch.from_numpy(v) for k, v in weights.items()
                           if k.startswith(ENCODER_PREFIX)}
                save_encoder(module.encoder, encoder_spec(self.model_dir), out_dir, state=encoder)

    def publish(self) -> tuple[int, dict[str, np.ndarray] | None]:
        """publish_weights as two return values: the small first one tells the driver this rank
        finished without fetching the weights (see LearnerGroup.publish_weights)."""
        return self.rank, self.publish_weights()

    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        self.engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state)

    def load_checkpoint(self, ckpt_dir: str, tag: str) -> dict:
        _, client_state = self.engine.load_checkpoint(ckpt_dir, tag=tag)
        return client_state or {}


def load_policy(model_dir: str, meta):
    """The trainable unit: the HF causal LM plus, for vector input, its feature encoder."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlreg.model.encoder import PolicyModel, load_encoder

    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    return PolicyModel(lm, load_encoder(model_dir), meta.feature_id)


def safe_torch_load(path: str, map_location=None) -> Any:
    """torch.load(weights_only=True) that also admits the few DeepSpeed types in CHECKPOINT_GLOBALS;
    a file naming any other global is refused, naming the file and the global."""
    import importlib
    import pickle

    import torch

    allowed = [getattr(importlib.import_module(mod), name)
               for mod, name in (g.rsplit(".", 1) for g in CHECKPOINT_GLOBALS)]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((line.strip() for line in str(err).splitlines() if "global" in line.lower()), str(err)[:300])
        raise ConfigError(f"{path}: refusing to load this checkpoint file: it holds objects rlreg's checkpoints "
                          f"never contain ({reason})") from None


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _enclosing_placement_group():
    """The placement group this process's children are captured into (a Tune trial's), else None."""
    import ray
    from ray.util.placement_group import get_current_placement_group

    if not ray.get_runtime_context().should_capture_child_tasks_in_placement_group:
        return None
    return get_current_placement_group()


class LearnerGroup:
    """Driver-side handle on W learner ranks: shards batches, steps them together, merges stats."""

    def __init__(self, model_dir: str | Path, cfg: LearnerConfig, lr: float, total_steps: int, ray_cfg,
                 seed: int = 0):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rlreg.actors.session import actor_env, get_with_timeout, require_resources, wait_for_actors

        self.cfg = cfg
        self.ray_cfg = ray_cfg
        bundle = {"CPU": ray_cfg.learner_cpus, **ray_cfg.learner_resources}
        if device.has_cuda():
            bundle["GPU"] = 1
        require_resources(cfg.world_size * bundle["CPU"], cfg.world_size * bundle.get("GPU", 0),
                          f"the learner group ({cfg.world_size} rank(s))")
        # Inside a Ray Tune trial, the trial's placement group already holds the ranks' resources
        # (rlreg.tune.sweep sizes it); a group of our own would wait for what the trial reserved.
        self._owns_placement = _enclosing_placement_group() is None
        if self._owns_placement:
            # One bundle per rank; PACK keeps ranks together when they fit, spreads them when not.
            self.placement = placement_group([bundle] * cfg.world_size, strategy="PACK")
            get_with_timeout(self.placement.ready(), ray_cfg.actor_start_timeout_s,
                             f"reserving {cfg.world_size} learner bundle(s) {bundle}")
        else:
            self.placement = _enclosing_placement_group()
        actor_cls = ray.remote(LearnerRank)
        self.ranks = [
            actor_cls.options(
                num_cpus=ray_cfg.learner_cpus, num_gpus=bundle.get("GPU", 0), resources=dict(ray_cfg.learner_resources),
                runtime_env={"env_vars": actor_env()}, scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.placement, placement_group_bundle_index=r if self._owns_placement else -1),
            ).remote(r, cfg.world_size, str(model_dir), cfg, lr, total_steps, ray_cfg.torch_threads, seed)
            for r in range(cfg.world_size)
        ]
        # The ranks meet (torch.distributed's TCP store) on rank 0's node, which may not be this one:
        # rank 0 names its node's IP and a free port there (on one machine, a local address).
        addr, port = wait_for_actors(self.ranks[0].rendezvous_address.remote(), ray_cfg.actor_start_timeout_s,
                                     "starting DeepSpeed learner rank 0")
        wait_for_actors([r.connect.remote(addr, port) for r in self.ranks], ray_cfg.actor_start_timeout_s,
                        f"starting {cfg.world_size} DeepSpeed learner rank(s) (meeting at {addr}:{port})")

    def _shards(self, batch: dict) -> list[dict]:
        n = len(batch["prompts"])
        bounds = np.linspace(0, n, self.cfg.world_size + 1).astype(int)
        return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(bounds[:-1], bounds[1:])]

    def _call_all(self, method: str, per_rank_args: list[tuple], what: str) -> list[Any]:
        refs = [getattr(rank, method).remote(*args) for rank, args in zip(self.ranks, per_rank_args)]
        return self._get(refs, what)

    def _get(self, refs: list, what: str) -> list[Any]:
        """Time-limited wait on the ranks; a dead or hung rank loses the whole group's state (its
        peers block in collectives), so both become LearnerLost for the RL loop to restore from."""
        import ray.exceptions

        from rlreg.actors.session import get_with_timeout
        from rlreg.errors import RemoteTimeout

        try:
            return get_with_timeout(refs, self.ray_cfg.call_timeout_s, what)
        except ray.exceptions.RayActorError as err:
            raise LearnerLost(f"a DeepSpeed learner rank died during {what} ({type(err).__name__})") from err
        except RemoteTimeout as err:
            raise LearnerLost(f"{err} (a DeepSpeed learner rank hung)") from err

    def step(self, objective: str, batch: dict, options: dict) -> dict:
        shards = self._shards(batch)
        results = self._call_all("step", [(objective, s, options) for s in shards], f"learner {objective} step")
        return merge_stats(results, [len(s["prompts"]) for s in shards])

    def evaluate(self, objective: str, batch: dict, options: dict) -> dict:
        shards = self._shards(batch)
        results = self._call_all("evaluate", [(objective, s, options) for s in shards], f"learner {objective} eval")
        return merge_stats(results, [len(s["prompts"]) for s in shards])

    def token_logprobs(self, batch: dict, temperature: float = 1.0) -> np.ndarray:
        shards = self._shards(batch)
        parts = self._call_all("token_logprobs", [(s, temperature) for s in shards], "learner logprobs")
        return np.concatenate(parts)

    def greedy(self, batch: dict) -> np.ndarray:
        shards = self._shards(batch)
        return np.concatenate(self._call_all("greedy", [(s,) for s in shards], "learner greedy decode"))

    def reference_logprobs(self, batch: dict, temperature: float = 1.0) -> np.ndarray:
        """logp [N, L] of the given tokens under the frozen starting model (for KL terms)."""
        shards = self._shards(batch)
        parts = self._call_all("reference_logprobs", [(s, temperature) for s in shards], "reference logprobs")
        return np.concatenate(parts)

    def publish_weights(self):
        """ObjectRef of rank 0's weights (left in the object store for the engines to read). Waits on
        every rank's small status value, so a dead rank surfaces here as LearnerLost and not later,
        in the engines, as a broken weights object."""
        status, weights = zip(*[r.publish.options(num_returns=2).remote() for r in self.ranks])
        self._get(list(status), "learner weight gather")
        return weights[0]

    def save_model(self, out_dir: str) -> None:
        self._call_all("save_model", [(out_dir,)] * len(self.ranks), "saving the model")

    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        self._call_all("save_checkpoint", [(ckpt_dir, tag, client_state)] * len(self.ranks), "saving a checkpoint")

    def load_checkpoint(self, ckpt_dir: str, tag: str) -> dict:
        return self._call_all("load_checkpoint", [(ckpt_dir, tag)] * len(self.ranks), "loading a checkpoint")[0]

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for rank in self.ranks:
            ray.kill(rank)
        if self._owns_placement:
            remove_placement_group(self.placement)
            self._owns_placement = False  # shutdown may be called again (idempotent)


def merge_stats(results: list[dict], weights: list[int]) -> dict:
    """Row-weighted mean of each numeric stat across ranks."""
    total = max(1, sum(weights))
    merged: dict[str, float] = {}
    for stats, w in zip(results, weights):
        for key, value in stats.items():
            if isinstance(value, (int, float)):
                merged[key] = merged.get(key, 0.0) + float(value) * w / total
    return merged

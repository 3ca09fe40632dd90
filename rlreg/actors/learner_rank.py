"""LearnerRank: one DeepSpeed engine rank as a Ray actor (rlreg.actors.learner.LearnerGroup drives W).

Ranks talk over torch.distributed (gloo on CPU, nccl on GPU); DeepSpeed averages gradients, so
each rank trains on its shard of the batch. Rank 0 publishes weights (HF names → numpy). The
losses are pure functions in rlreg.algos; a rank computes the policy's logprobs and calls them."""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import pickle
import socket
from typing import Any, Callable

import numpy as np
import ray
import torch

from rlreg import console, device
from rlreg.actors.config import LearnerConfig
from rlreg.algos.config import RLLossOptions, SFTLossOptions
from rlreg.algos.experience import LearnerBatch
from rlreg.algos.losses import rl_loss
from rlreg.algos.token_losses import supervised_loss, token_values
from rlreg.errors import ConfigError
from rlreg.model.build import ModelMeta, encoder_spec
from rlreg.model.encoder import ENCODER_PREFIX, save_encoder
from rlreg.model.logprobs import NumberHead, answer_logits, gather_tokens, greedy_numbers
from rlreg.model.policy import load_policy
from rlreg.numbers.registry import build_number_tokenizer

SHM_COMM_OP = "deepspeed_shm_comm"  # its op builder's NAME (deepspeed.ops.op_builder)
# The only non-tensor types DeepSpeed 0.19.8's checkpoints of rlreg's runs hold (ZeRO 0-3, fp32/bf16;
# listed with torch.serialization.get_unsafe_globals_in_checkpoint): everything else is refused.
CHECKPOINT_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                      "deepspeed.runtime.zero.config.ZeroStageEnum",
                      "deepspeed.utils.tensor_fragment.fragment_address")


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
    only rank 0 can tell once Ray has put it on a node (LearnerGroup asks it: `rendezvous_address`).
    Methods that take a batch take this rank's shard first (LearnerGroup.call shards it)."""

    def __init__(self, rank: int, world_size: int, model_dir: str, cfg: LearnerConfig, lr: float,
                 total_steps: int, torch_threads: int = 0, seed: int = 0):
        console.redirect_actor_output(f"learner-rank{rank}")
        self.rank = rank
        self._setup = (world_size, model_dir, cfg, lr, total_steps, torch_threads, seed)

    def rendezvous_address(self) -> tuple[str, int]:
        """(IP of this actor's node, a free port there): where the ranks meet when this is rank 0."""
        host = ray.util.get_node_ip_address()
        return host, free_port(host)

    def connect(self, master_addr: str, master_port: int) -> int:
        """Join the group at rank 0's address and build this rank's DeepSpeed engine."""
        world_size, model_dir, cfg, lr, total_steps, torch_threads, seed = self._setup
        rank = self.rank
        device.configure_torch_threads(torch_threads or None)
        # deepspeed.initialize otherwise falls back to MPI discovery (and fails on mpi4py).
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0")
        import deepspeed  # heavy: only inside the actor, after the environment above is set

        torch.manual_seed(seed)
        self.cfg = cfg
        self.model_dir = model_dir
        self._reference = None  # frozen copy of the starting model, loaded when a KL term needs it
        self.meta = ModelMeta.load(model_dir)
        self.number_tokenizer = build_number_tokenizer(self.meta.number_tokenizer)
        self.device = torch.device(device.device_name())
        self.token_values = token_values(self.number_tokenizer).to(self.device)
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
        if world_size == 1:
            # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op when its group starts
            # (measured 60-100 s on 2 cores, the largest part of a first run); one rank never reduces.
            # It builds the op only if this table calls it compatible (deepspeed/comm/torch.py).
            deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
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
        return ray.get_runtime_context().get_node_id()

    # -- training -------------------------------------------------------------------------------
    def step(self, batch: LearnerBatch, objective: str, options) -> dict:
        """One optimizer step on this rank's shard with the named objective (OBJECTIVES)."""
        self.engine.train()
        loss, stats = OBJECTIVES[objective](self, batch, options)
        self.engine.backward(loss)
        self.engine.step()
        stats["loss"] = float(loss.detach())
        stats["lr"] = float(self.scheduler.get_last_lr()[0])
        return stats

    def evaluate(self, batch: LearnerBatch, objective: str, options) -> dict:
        self.engine.eval()
        with torch.no_grad():
            loss, stats = OBJECTIVES[objective](self, batch, options)
        stats["loss"] = float(loss)
        return stats

    def policy_logprobs(self, batch: LearnerBatch, temperature: float = 1.0,
                        model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logp of the batch's tokens [N, L], full constrained logp [N, L, V]) under the current
        model (or `model`, e.g. the frozen reference)."""
        tokens = torch.tensor(np.asarray(batch.tokens), dtype=torch.long, device=self.device)
        logits = answer_logits(model if model is not None else self.engine, batch.prompts, self.head.token_ids[tokens],
                               self.meta.pad_id, self._features(batch), shared_prefix=self.cfg.shared_prefix)
        logp_full = self.head.logprobs(logits, temperature)
        return gather_tokens(logp_full, tokens), logp_full

    def _features(self, batch: LearnerBatch) -> torch.Tensor | None:
        if batch.features is None:
            return None
        return torch.tensor(np.asarray(batch.features), dtype=torch.float32, device=self.device)

    # -- reading the policy ---------------------------------------------------------------------
    def token_logprobs(self, batch: LearnerBatch, temperature: float = 1.0) -> np.ndarray:
        """logp [N, L] of the batch's number-token sequences under the current policy."""
        self.engine.eval()
        with torch.no_grad():
            logp, _ = self.policy_logprobs(batch, temperature)
        return logp.cpu().numpy()

    def greedy(self, batch: LearnerBatch) -> np.ndarray:
        """Constrained greedy decode by the learner's current model: number-token indices [N, L]."""
        self.engine.eval()
        with torch.no_grad():
            return greedy_numbers(self.engine, self.head, batch.prompts, self.meta.pad_id,
                                  self._features(batch)).cpu().numpy()

    def reference_logprobs(self, batch: LearnerBatch, temperature: float = 1.0) -> np.ndarray:
        """logp [N, L] of the batch's tokens under the frozen starting model (for KL terms)."""
        if self._reference is None:
            self._reference = load_policy(self.model_dir, self.meta)
            self._reference.to(self.device).eval().requires_grad_(False)
        with torch.no_grad():
            logp, _ = self.policy_logprobs(batch, temperature, model=self._reference)
        return logp.cpu().numpy()

    # -- weights and checkpoints ----------------------------------------------------------------
    def publish_weights(self) -> dict[str, np.ndarray] | None:
        """Full weights under HF names on rank 0 (every rank must call: ZeRO-3 gathers collectively)."""
        import deepspeed

        module = self.engine.module
        params = list(module.parameters())
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if self.cfg.zero_stage == 3 \
            else contextlib.nullcontext()
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

    def publish(self) -> tuple[int, dict[str, np.ndarray] | None]:
        """publish_weights as two return values: the small first one tells the driver this rank
        finished without fetching the weights (see LearnerGroup.publish_weights)."""
        return self.rank, self.publish_weights()

    def save_model(self, out_dir: str) -> None:
        """HF directory (safetensors, plus the feature encoder for vector input) from rank 0;
        every rank must call (ZeRO-3 gather)."""
        weights = self.publish_weights()
        if self.rank != 0:
            return
        module = self.engine.module
        lm = {k: torch.from_numpy(v) for k, v in weights.items() if not k.startswith(ENCODER_PREFIX)}
        module.lm.save_pretrained(out_dir, state_dict=lm, safe_serialization=True)
        if module.encoder is not None:
            encoder = {k[len(ENCODER_PREFIX):]: torch.from_numpy(v) for k, v in weights.items()
                       if k.startswith(ENCODER_PREFIX)}
            save_encoder(module.encoder, encoder_spec(self.model_dir), out_dir, state=encoder)

    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        self.engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state)

    def load_checkpoint(self, ckpt_dir: str, tag: str) -> dict:
        _, client_state = self.engine.load_checkpoint(ckpt_dir, tag=tag)
        return client_state or {}


# -- objectives: name -> (rank, shard, options) -> (loss, stats) --------------------------------
def _supervised(rank: LearnerRank, batch: LearnerBatch, options: SFTLossOptions):
    """Token-level supervision toward the batch's tokens (the targets' number tokens)."""
    _, logp_full = rank.policy_logprobs(batch)
    targets = torch.tensor(np.asarray(batch.tokens), dtype=torch.long, device=rank.device)
    return supervised_loss(logp_full, targets, options, rank.token_values)


def _reinforce(rank: LearnerRank, batch: LearnerBatch, options: RLLossOptions):
    """Policy gradient on rollouts with the batch's advantages (rlreg.algos.losses.rl_loss)."""
    logp, logp_full = rank.policy_logprobs(batch, options.temperature)
    ref = rank.reference_logprobs(batch, options.temperature) if options.kl_in_loss else None
    return rl_loss(logp, logp_full, batch, options, ref)


OBJECTIVES: dict[str, Callable] = {"sft": _supervised, "rl": _reinforce}


def safe_torch_load(path: str, map_location=None) -> Any:
    """torch.load(weights_only=True) that also admits the few DeepSpeed types in CHECKPOINT_GLOBALS;
    a file naming any other global is refused, naming the file and the global."""
    allowed = [getattr(importlib.import_module(mod), name)
               for mod, name in (g.rsplit(".", 1) for g in CHECKPOINT_GLOBALS)]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((line.strip() for line in str(err).splitlines() if "global" in line.lower()), str(err)[:300])
        raise ConfigError(f"{path}: refusing to load this checkpoint file: it holds objects rlreg's checkpoints "
                          f"never contain ({reason})") from None

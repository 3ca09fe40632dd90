"""LearnerRank: one DeepSpeed engine rank as a Ray actor (rlreg.actors.learner.LearnerGroup drives W).

Ranks talk over torch.distributed (gloo on CPU, nccl on GPU); DeepSpeed averages gradients, so
each rank trains on its shard of the batch. Rank 0 publishes weights (HF names → numpy). The
losses are pure functions in rlreg.algos; a rank computes the policy's logprobs and calls them."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable

import numpy as np
import ray
import torch

from rlreg import console, device
from rlreg.actors.config import LearnerConfig
from rlreg.actors.deepspeed_setup import cosine_with_warmup, deepspeed_config, free_port, safe_torch_load
from rlreg.algos.config import RLLossOptions, SFTLossOptions
from rlreg.algos.experience import LearnerBatch, merge_stats
from rlreg.algos.losses import rl_loss
from rlreg.algos.token_losses import supervised_loss, token_values
from rlreg.model.build import ModelMeta, encoder_spec
from rlreg.model.encoder import ENCODER_PREFIX, PolicyModel, load_encoder, save_encoder
from rlreg.model.config import LoraConfig
from rlreg.model.logprobs import NumberHead, answer_logits, gather_tokens, greedy_numbers
from rlreg.model.lora import LoraAdapters, check_learner_supports
from rlreg.model.policy import load_policy
from rlreg.model.weight_transfer import ROOT, SyncFailed, TensorSpec, WeightGroup, bucket_nbytes, pack_bucket
from rlreg.numbers.registry import build_number_tokenizer

SHM_COMM_OP = "deepspeed_shm_comm"  # its op builder's NAME (deepspeed.ops.op_builder)
class LearnerRank:
    """Started in two phases: the actor (placed by Ray), then `connect` with rank 0's address, which
    only rank 0 can tell once Ray has put it on a node (LearnerGroup asks it: `rendezvous_address`).
    Methods that take a batch take this rank's shard first (LearnerGroup.call shards it).
    With `lora` (model.lora) the LM's base weights stay frozen and only its adapters (and the
    feature encoder, for vector input) train (rlreg.model.lora)."""

    def __init__(self, rank: int, world_size: int, model_dir: str, cfg: LearnerConfig, lr: float,
                 total_steps: int, torch_threads: int = 0, seed: int = 0, lora: LoraConfig | None = None):
        console.redirect_actor_output(f"learner-rank{rank}")
        self.rank = rank
        self._setup = (world_size, model_dir, cfg, lr, total_steps, torch_threads, seed)
        self._lora_cfg = lora

    def rendezvous_address(self) -> tuple[str, int]:
        """(IP of this actor's node, a free port there): where the ranks meet when this is rank 0."""
        host = ray.util.get_node_ip_address()
        return host, free_port(host)

    def connect(self, master_addr: str, master_port: int) -> int:
        """Join the group at rank 0's address and build this rank's DeepSpeed engine."""
        world_size, model_dir, cfg, lr, total_steps, torch_threads, seed = self._setup
        rank = self.rank
        device.configure_torch_threads(torch_threads or None)
        device.enable_tf32()
        cfg.bf16 = device.learner_bf16(cfg.bf16, model_dir)  # None: follow the start model's dtype
        # deepspeed.initialize otherwise falls back to MPI discovery (and fails on mpi4py).
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0")
        import deepspeed  # heavy: only inside the actor, after the environment above is set

        check_learner_supports(self._lora_cfg, cfg.zero_stage)
        torch.manual_seed(seed)
        self.cfg = cfg
        self.model_dir = model_dir
        # Frozen copy of the starting model, loaded when a KL term needs it; with LoRA the live
        # model with its adapters off is that model, and no copy is made.
        self._reference = None
        self.meta = ModelMeta.load(model_dir)
        self.number_tokenizer = build_number_tokenizer(self.meta.number_tokenizer)
        self.device = torch.device(device.device_name())
        self.token_values = token_values(self.number_tokenizer).to(self.device)
        ds_config = deepspeed_config(cfg, world_size)
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op when its group starts
        # (measured 60-100 s on 2 cores, the largest part of a first run). Only its inference
        # all-reduce (tensor-parallel inference, deepspeed.module_inject) uses it; training reduces
        # through torch.distributed at any world size. It builds the op only if this table calls it
        # compatible (deepspeed/comm/torch.py).
        deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
        deepspeed.init_distributed(dist_backend=device.dist_backend(), auto_mpi_discovery=False)
        model = self._load_partitioned(ds_config) if cfg.zero_stage == 3 else load_policy(model_dir, self.meta)
        self.lora = LoraAdapters(model.lm, self._lora_cfg) if self._lora_cfg is not None else None
        if cfg.gradient_checkpointing:
            model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.head = NumberHead(self.meta.number_token_ids, self.number_tokenizer.allowed, self.device)
        # A client torch optimizer: DeepSpeed's own AdamW would JIT-build fused_adam (~150 s). Only
        # what trains: a frozen base (LoRA) gets neither optimizer states nor weight decay.
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=cfg.weight_decay,
                                      betas=tuple(cfg.betas or (0.9, 0.999)))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, cosine_with_warmup(total_steps, cfg.warmup_fraction, cfg.min_lr_ratio))
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        # DeepSpeed reads checkpoints with torch.load(weights_only=False), which runs whatever a
        # pickle names; every load goes through this engine's checkpoint_engine, so restrict it.
        self.engine.checkpoint_engine.load = safe_torch_load
        return rank

    def _load_partitioned(self, ds_config: dict):
        """ZeRO-3: the policy built partitioned from the start. While an HfDeepSpeedConfig is alive,
        transformers' from_pretrained constructs the LM under deepspeed.zero.Init and loads each
        weight into its partitions, so no rank ever holds the whole fp32 model (the feature encoder,
        small, is partitioned by deepspeed.initialize). Released at once: later loads (the frozen
        KL reference) must come out whole."""
        from transformers.integrations import HfDeepSpeedConfig

        zero3 = HfDeepSpeedConfig(ds_config)
        try:
            return load_policy(self.model_dir, self.meta)
        finally:
            del zero3

    def ready(self) -> int:
        return self.rank

    def node_id(self) -> str:
        """The Ray node this rank runs on (for placement checks)."""
        return ray.get_runtime_context().get_node_id()

    # -- training -------------------------------------------------------------------------------
    def step(self, batch: LearnerBatch, objective: str, options) -> dict:
        """One optimizer step on this rank's shard with the named objective (OBJECTIVES): one
        forward/backward per micro-batch (LearnerBatch.micro_batches), each loss scaled by its
        share of the batch's rows (LearnerBatch.shards says why), gradients accumulated, one step.
        Stats: row-weighted means over the passes, with the loss unscaled (the shard's mean)."""
        self.engine.train()
        passes = batch.micro_batches()
        results, rows = [], []
        for k, part in enumerate(passes):
            # Off the boundary, ZeRO-0/1 keep gradients local and reduce them after the last pass;
            # ZeRO-2/3 reduce in every pass, hence the same pass count on every rank.
            self.engine.set_gradient_accumulation_boundary(k == len(passes) - 1)
            loss, stats = OBJECTIVES[objective](self, part.batch, options)
            self.engine.backward(loss * part.loss_scale)
            stats["loss"] = float(loss.detach())
            results.append(stats)
            rows.append(part.rows)
        self.engine.step()
        # A stand-in shard's stats (a copied row) still go back, for a caller that weighs by rows.
        stats = merge_stats(results, rows) if any(rows) else results[0]
        stats["lr"] = float(self.scheduler.get_last_lr()[0])
        grad_norm = self.engine.get_global_grad_norm()  # the whole batch's, before clipping (ZeRO 1-3)
        if grad_norm is not None:
            stats["grad_norm"] = float(grad_norm)
        return stats

    def evaluate(self, batch: LearnerBatch, objective: str, options) -> dict:
        """The objective's loss and stats on this shard (a shard without rows reports its stand-in
        row's, which merge_stats weighs 0 by the shard's size)."""
        self.engine.eval()
        with torch.no_grad():
            loss, stats = OBJECTIVES[objective](self, batch.runnable(), options)
        stats["loss"] = float(loss)
        return stats

    def policy_logprobs(self, batch: LearnerBatch, temperature: float = 1.0,
                        model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logp of the batch's tokens [N, L], full constrained logp [N, L, V]) under the current
        model (or `model`, e.g. the frozen reference)."""
        tokens = torch.tensor(np.asarray(batch.tokens), dtype=torch.long, device=self.device)
        logits = answer_logits(model if model is not None else self.engine, batch.prompts, self.head.token_ids[tokens],
                               self.meta.pad_id, self.head.token_ids, self._features(batch),
                               shared_prefix=self.cfg.shared_prefix)
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
            logp, _ = self.policy_logprobs(batch.runnable(), temperature)
        return logp.cpu().numpy()[:len(batch)]  # [:0] for a stand-in's row

    def greedy(self, batch: LearnerBatch) -> np.ndarray:
        """Constrained greedy decode by the learner's current model: number-token indices [N, L]."""
        self.engine.eval()
        run = batch.runnable()
        with torch.no_grad():
            return greedy_numbers(self.engine, self.head, run.prompts, self.meta.pad_id,
                                  self._features(run)).cpu().numpy()[:len(batch)]

    def reference_logprobs(self, batch: LearnerBatch, temperature: float = 1.0) -> np.ndarray:
        """logp [N, L] of the batch's tokens under the frozen starting model (for KL terms)."""
        if not len(batch):
            return np.zeros((0, self.head.length), dtype=np.float32)  # the reference joins no collective
        if self.lora is not None:
            return self._base_logprobs(batch, temperature)
        if self._reference is None:
            self._reference = load_policy(self.model_dir, self.meta)
            self._reference.to(self.device).eval().requires_grad_(False)
        with torch.no_grad():
            logp, _ = self.policy_logprobs(batch, temperature, model=self._reference)
        return logp.cpu().numpy()

    def _base_logprobs(self, batch: LearnerBatch, temperature: float) -> np.ndarray:
        """LoRA: the reference LM is the frozen base, i.e. the live LM with its adapters off (no
        second copy). The feature encoder (vector input) trains in full, so the reference gets the
        start model's, a small frozen copy. Run outside the DeepSpeed engine (no step bookkeeping)
        in eval mode, like a separate reference. Called between a step's forward and backward (KL
        in the loss): adapters and training mode are back before backward, which with gradient
        checkpointing recomputes the forward."""
        lm = self.engine.module.lm
        if self._reference is None:
            encoder = load_encoder(self.model_dir)
            if encoder is not None:
                encoder.to(self.device).eval().requires_grad_(False)
            self._reference = PolicyModel(lm, encoder, self.meta.feature_id)
        training = lm.training
        lm.eval()
        try:
            with self.lora.disabled(), torch.no_grad():
                logp, _ = self.policy_logprobs(batch, temperature, model=self._reference)
        finally:
            lm.train(training)
        return logp.cpu().numpy()

    # -- weights and checkpoints ----------------------------------------------------------------
    def publish_weights(self, whole: bool = False) -> dict[str, np.ndarray] | None:
        """Weights under HF names on rank 0 (every rank must call: ZeRO-3 gathers collectively): all
        of them, or with LoRA only what a sync sends (LoraAdapters.sync_tensors; `whole`: all, merged)."""
        import deepspeed

        module = self.engine.module
        params = list(module.parameters())
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if self.cfg.zero_stage == 3 \
            else contextlib.nullcontext()
        with gather, torch.no_grad():
            if self.rank != 0:
                return None
            lm, encoder = module.split_state(module.state_dict())
            if self.lora is not None:
                # Under HF names, targeted weights merged (whole: the entire LM, for a saved model).
                lm = self.lora.merged_state() if whole else {name: get() for name, get in self.lora.sync_tensors()}
                if not whole and module.encoder is not None:
                    # Vector input: each rollout worker rebuilds its prompt embeddings from the token
                    # embeddings of every update (RolloutWorker.load_weights), unchanged or not.
                    lm.update([self.lora.input_embeddings()])
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

    # -- weights over a process group to the engines (sync.route: collective) -----------------------
    def weight_specs(self) -> list[TensorSpec]:
        """The LM's parameters as the engines name them, in sending order, with their whole shapes
        (ZeRO-3 holds a partition; ds_shape is the full one) and the training dtype. With LoRA only
        the targeted modules' parents, merged (LoraAdapters.sync_tensors says why that suffices)."""
        if self.lora is not None:
            return [TensorSpec(name, str(p.dtype).removeprefix("torch."), tuple(p.shape))
                    for name, p in self._lora_sync_params()]
        return [TensorSpec(name, str(p.dtype).removeprefix("torch."), tuple(getattr(p, "ds_shape", p.shape)))
                for name, p in self._sent_parameters()]

    def _sent_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Every name of every parameter, tied ones under each of their names: vLLM's reload
        rebuilds each layer from what it receives, so a tied head (Qwen2) that received nothing
        would be put back to its weights from before the sync, no longer tied to the embeddings."""
        return list(self.engine.module.lm.named_parameters(remove_duplicate=False))

    def _lora_sync_params(self) -> list[tuple[str, torch.Tensor]]:
        """(HF name, live parameter whose shape and dtype the sent tensor has): a merged weight has
        its base weight's."""
        params = dict(self.engine.module.lm.named_parameters())
        return [(name, params[peft_name]) for name, peft_name in self.lora.sync_names()]

    def open_weight_group(self, host: str, port: int, size: int, timeout_s: float, backend: str) -> int:
        """Host the transfer group (rank 0 only) at host:port; returns when all `size` members joined."""
        self.close_weight_group()
        self._weight_group = WeightGroup(host, port, ROOT, size, timeout_s, backend)
        return size

    def gpu_slot(self) -> tuple[str, tuple]:
        """(node, GPU ids Ray gave this rank): which engines share its GPU (weight_sync_backend)."""
        return ray.get_runtime_context().get_node_id(), tuple(sorted(map(str, ray.get_gpu_ids())))

    def close_weight_group(self) -> None:
        group = getattr(self, "_weight_group", None)
        if group is not None:
            group.close()
        self._weight_group = None

    def send_weights(self, buckets: list[list[int]]) -> dict:
        """Broadcast the LM's parameters bucket by bucket from rank 0. Every rank calls: under ZeRO-3
        each bucket's parameters are gathered collectively (only that bucket's whole at a time);
        under ZeRO 0-2 rank 0 holds them whole and the other ranks return at once."""
        import deepspeed

        params = [p for _, p in self._sent_parameters()]
        if self.cfg.zero_stage != 3 and self.rank != 0:
            return {}
        specs = self.weight_specs()
        # LoRA (never ZeRO-3): tensor makers, so one merged weight at a time is alive.
        makers = None if self.lora is None else [get for _, get in self.lora.sync_tensors()]

        def packed():
            for bucket in buckets:
                members = [params[i] for i in bucket] if makers is None else None
                unique = None if members is None else list({id(p): p for p in members}.values())  # tied: gather once
                gather = deepspeed.zero.GatheredParameters(unique, modifier_rank=None) \
                    if self.cfg.zero_stage == 3 else contextlib.nullcontext()
                with gather, torch.no_grad():  # the copy is taken inside: ZeRO-3 frees the whole tensors after
                    tensors = members if makers is None else (makers[i]() for i in bucket)
                    buffer = None if self.rank != 0 else pack_bucket(tensors, torch.empty(
                        bucket_nbytes(specs, bucket), dtype=torch.uint8, device=self._weight_group.device))
                if buffer is not None:
                    yield buffer

        started, buffers = time.monotonic(), packed()
        if self.rank != 0:
            for _ in buffers:  # ZeRO-3: join every bucket's gather
                pass
            return {}
        try:
            sent = self._weight_group.send(buffers)
        except SyncFailed:
            for _ in buffers:  # keep joining the gathers, where the other ranks wait, then fail
                pass
            raise
        return {"sync_bytes": sent, "sync_seconds": time.monotonic() - started, "sync_buckets": len(buckets)}

    def save_model(self, out_dir: str) -> None:
        """HF directory (safetensors, plus the feature encoder for vector input) from rank 0;
        every rank must call (ZeRO-3 gather). With LoRA: the merged model, the same files as a full
        fine-tune, and the adapters alone in lora_adapter/."""
        weights = self.publish_weights(whole=True)
        if self.rank != 0:
            return
        module = self.engine.module
        lm = {k: torch.from_numpy(v) for k, v in weights.items() if not k.startswith(ENCODER_PREFIX)}
        module.lm.save_pretrained(out_dir, state_dict=lm, safe_serialization=True)
        if self.lora is not None:
            self.lora.save(out_dir)
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

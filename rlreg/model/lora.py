"""LoRA (model.lora): low-rank adapters, trained with peft, on a frozen base LM.

peft injects its layers into the policy's HF LM in place, so the LM keeps its module names; a
targeted Linear becomes `<name>.base_layer` (the frozen W) plus `<name>.lora_A/lora_B`. Outside
the learner everything sees a plain HF model: merged weights W + scale·B·A under the HF names,
computed from the live parameters (the trained module is never merged in place, which would
change what the next step trains)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from rlreg.errors import ConfigError
from rlreg.model.config import LoraConfig

ADAPTER_DIR = "lora_adapter"  # in a saved model directory: a subfolder, as vLLM loads every top-level *.safetensors
ADAPTER = "default"  # peft's name for the one adapter


def check_learner_supports(lora: LoraConfig | None, zero_stage: int) -> None:
    """Refuse what LoRA does not run with, before any rank starts."""
    if lora is not None and zero_stage == 3:
        # ZeRO-3 partitions the frozen base too: the merged weights, the reference pass (adapters off)
        # and a rank without rows would all need gathers. LoRA's trainable state is small, so ZeRO-2
        # (optimizer states and gradients sharded) already covers what ZeRO-3 would save.
        raise ConfigError(f"model.lora is not supported with learner.zero_stage=3 (got learner.zero_stage="
                          f"{zero_stage}); use learner.zero_stage 0-2, or model.lora: null for full fine-tuning")


def hf_name(name: str) -> str:
    """A parameter's name in the LM with adapters → its name in the HF model without them."""
    return name.replace(".base_layer.", ".")


class LoraAdapters:
    """The adapters injected into `lm` (a PolicyModel's HF LM, modified in place), and the merged
    weights the engines and saved models get."""

    def __init__(self, lm: nn.Module, cfg: LoraConfig):
        from peft import LoraConfig as PeftLoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer

        peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, bias="none",
                                  target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
        try:
            # The PeftModel is kept only as a handle (disable_adapter, save_pretrained), not as a
            # submodule of the policy: the policy's state dict stays the LM's, under HF-based names.
            self.peft = get_peft_model(lm, peft_cfg)
        except ValueError as err:  # peft's "Target modules ... not found in the base model"
            raise ConfigError(f"model.lora.target_modules={list(cfg.target_modules)}: {err}") from None
        self.lm = lm
        self.layers: dict[str, LoraLayer] = {n: m for n, m in lm.named_modules() if isinstance(m, LoraLayer)}
        for name, layer in self.layers.items():
            if type(layer.get_base_layer()) is not nn.Linear:
                raise ConfigError(f"model.lora.target_modules: {name} is a {type(layer.get_base_layer()).__name__}; "
                                  f"only Linear layers are supported")
        if isinstance(lm.get_output_embeddings(), LoraLayer):
            # PolicyModel.number_logits reads the head's weight rows directly (never its forward),
            # so an adapter there would not take part in the learner's logits.
            raise ConfigError("model.lora.target_modules must not name the LM head (lm_head)")
        # Everything in a LoRA layer outside its base layer is adapter state (lora_A, lora_B, dropout).
        self._adapter_params = {f"{name}.{p}" for name, layer in self.layers.items()
                                for p, _ in layer.named_parameters() if not p.startswith("base_layer.")}
        self._merged = {f"{name}.base_layer.weight": layer for name, layer in self.layers.items()}
        # What a sync sends: every parameter of each targeted module's parent (e.g. all of self_attn
        # for q_proj). vLLM fuses siblings into one layer (q/k/v → qkv_proj, gate/up → gate_up_proj)
        # and its in-place reload rebuilds a layer from the tensors it is given: a layer given only
        # q_proj would lose k and v. So whole parents, base weights as they are (unchanged, but needed
        # for the fused layer), targeted weights merged. The rest of the model is not sent: see sync_tensors.
        parents = {name.rpartition(".")[0] for name in self.layers}
        self._sync = [name for name, _ in lm.named_parameters()
                      if name not in self._adapter_params
                      and any(not parent or name.startswith(parent + ".") for parent in parents)]

    def disabled(self) -> contextlib.AbstractContextManager:
        """The base model: adapters skipped in every forward inside the block (the KL reference)."""
        return self.peft.disable_adapter()

    @torch.no_grad()
    def merged_weight(self, layer) -> torch.Tensor:
        """W + scale·B·A of one LoRA Linear, in W's dtype (summed in float32), as a new tensor."""
        base = layer.get_base_layer().weight
        a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
        delta = (b.float() @ a.float()) * layer.scaling[ADAPTER]
        return (base.float() + delta).to(base.dtype)

    def _tensor(self, name: str, param: torch.Tensor) -> Callable[[], torch.Tensor]:
        layer = self._merged.get(name)
        return (lambda: self.merged_weight(layer)) if layer is not None else (lambda: param.detach())

    def sync_names(self) -> list[tuple[str, str]]:
        """(HF name, name in the LM with adapters) of what sync_tensors gives, in its order."""
        return [(hf_name(name), name) for name in self._sync]

    def sync_tensors(self) -> list[tuple[str, Callable[[], torch.Tensor]]]:
        """(HF name, tensor maker) of what an engine needs to hold the learner's current LM, in
        model order; each merged weight is computed when its maker is called (one at a time).
        Only the targeted modules' parents are there: engines start from the base model's
        directory (the one the learner loaded; a replaced engine too) and the rest of the LM is
        frozen, so every other weight an engine holds already equals the learner's."""
        params = dict(self.lm.named_parameters())
        return [(hf, self._tensor(name, params[name])) for hf, name in self.sync_names()]

    def input_embeddings(self) -> tuple[str, torch.Tensor]:
        """(HF name, weight) of the token embeddings (frozen: never a LoRA target here)."""
        weight = self.lm.get_input_embeddings().weight
        return next((hf_name(n), p.detach()) for n, p in self.lm.named_parameters() if p is weight)

    def merged_state(self) -> dict[str, torch.Tensor]:
        """The whole LM's state dict under HF names, targeted weights merged (a saved model)."""
        return {hf_name(name): (self.merged_weight(self._merged[name]) if name in self._merged else t.detach())
                for name, t in self.lm.state_dict().items() if name not in self._adapter_params}

    def save(self, model_dir: str | Path) -> Path:
        """The adapters alone (peft's format) in model_dir/lora_adapter/."""
        out = Path(model_dir, ADAPTER_DIR)
        # Embeddings are never adapted here (Linear only), and "auto" would look the base model up.
        self.peft.save_pretrained(str(out), save_embedding_layers=False, safe_serialization=True)
        return out

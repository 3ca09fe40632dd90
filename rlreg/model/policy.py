"""The trainable unit that the learner ranks (and the regression-head baseline) start from."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from rlreg.model.build import ModelMeta
from rlreg.model.encoder import PolicyModel, load_encoder


def load_policy(model_dir: str, meta: ModelMeta) -> PolicyModel:
    """The HF causal LM in float32 plus, for vector input, its feature encoder."""
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    return PolicyModel(lm, load_encoder(model_dir), meta.feature_id)

"""Vector input: an MLP maps a standardised feature vector to `soft_tokens` prompt embeddings
that the decoder reads in place of placeholder tokens (the paper's tabular model).

The prompt keeps its token form — [bos, <feat> × k, <answer>] — so the learner and the engine
share one path: embed the ids, then overwrite the placeholder rows with the encoder's output."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from rlreg.io import write_json
from rlreg.model.build import encoder_spec
from rlreg.rundir import ModelFiles

ENCODER_FILE = ModelFiles.ENCODER_WEIGHTS
ENCODER_META = ModelFiles.ENCODER_SPEC
ENCODER_PREFIX = "encoder."  # prefix of the encoder's weights in the policy module and in published weights


class FeatureEncoder(nn.Module):
    def __init__(self, features: int, embed_dim: int, soft_tokens: int, hidden: int):
        super().__init__()
        self.soft_tokens, self.embed_dim = soft_tokens, embed_dim
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, soft_tokens * embed_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).view(features.shape[0], self.soft_tokens, self.embed_dim)




def save_encoder(encoder: FeatureEncoder, spec: dict, model_dir: str | Path, state: dict | None = None) -> None:
    from safetensors.torch import save_file

    state = state if state is not None else encoder.state_dict()
    Path(model_dir, ENCODER_FILE).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(Path(model_dir, ENCODER_FILE)))
    write_json(Path(model_dir, ENCODER_META), spec)


def load_encoder(model_dir: str | Path) -> FeatureEncoder | None:
    from safetensors.torch import load_file

    spec = encoder_spec(model_dir)
    if spec is None:
        return None
    encoder = FeatureEncoder(spec["features"], spec["embed_dim"], spec["soft_tokens"], spec["hidden"])
    encoder.load_state_dict(load_file(str(Path(model_dir, ENCODER_FILE))))
    return encoder


def build_encoder(model_dir: str | Path, features: int, embed_dim: int, soft_tokens: int, hidden: int,
                  seed: int) -> None:
    torch.manual_seed(seed + 1)
    encoder = FeatureEncoder(features, embed_dim, soft_tokens, hidden)
    save_encoder(encoder, {"features": features, "embed_dim": embed_dim, "soft_tokens": soft_tokens,
                           "hidden": hidden}, model_dir)


def save_encoder_stats(model_dir: str | Path, mean: np.ndarray, std: np.ndarray) -> None:
    path = Path(model_dir, ENCODER_META)
    spec = json.loads(path.read_text())
    spec.update(mean=[float(v) for v in mean], std=[float(v) for v in std])
    write_json(path, spec)


def splice_embeddings(token_embeds: torch.Tensor, input_ids: torch.Tensor, soft: torch.Tensor,
                      placeholder_id: int) -> torch.Tensor:
    """Replace the placeholder rows of token_embeds [N, T, H] with soft [N, k, H], in order."""
    mask = input_ids == placeholder_id
    if int(mask.sum()) != soft.shape[0] * soft.shape[1]:
        raise ValueError(f"prompts hold {int(mask.sum())} placeholder tokens, the encoder gave "
                         f"{soft.shape[0] * soft.shape[1]} soft tokens")
    out = token_embeds.clone()
    out[mask] = soft.reshape(-1, soft.shape[-1]).to(out.dtype)
    return out


class PolicyModel(nn.Module):
    """The causal LM plus, for vector input, the feature encoder: the unit DeepSpeed trains."""

    def __init__(self, lm: nn.Module, encoder: FeatureEncoder | None, placeholder_id: int | None):
        super().__init__()
        self.lm = lm
        self.encoder = encoder
        self.placeholder_id = placeholder_id

    def forward(self, input_ids, attention_mask=None, features=None, number_token_ids=None, logits_at=None,
                **kwargs):
        """The causal LM's output; or, given number_token_ids [V], only the logits the learner reads:
        logits [N, P, V] of those vocabulary entries at positions logits_at [N, P] (every position
        when None), with past_key_values. The LM head's [N, T, vocab] logits are never formed (tens
        of GB at a 150k vocabulary): one small matmul on the final hidden states instead."""
        if number_token_ids is None:
            return self.lm(**self._inputs(input_ids, features), attention_mask=attention_mask, **kwargs)
        out = self.final_hidden(input_ids, attention_mask, features, **kwargs)
        hidden = out.last_hidden_state
        if logits_at is not None:
            hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1), logits_at]
        return CausalLMOutputWithPast(logits=self.number_logits(hidden, number_token_ids),
                                      past_key_values=out.past_key_values)

    def final_hidden(self, input_ids, attention_mask=None, features=None, **kwargs):
        """The transformer body's output: last_hidden_state [N, T, H] (after the final norm, what
        the LM head reads) and past_key_values."""
        return self.lm.get_decoder()(**self._inputs(input_ids, features), attention_mask=attention_mask, **kwargs)

    def number_logits(self, hidden: torch.Tensor, number_token_ids: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] → logits [..., V] of the number_token_ids rows of the LM head."""
        head = self.lm.get_output_embeddings()
        # The rows are read outside the head's own forward (calling it would form all vocab logits).
        # Under ZeRO-3 that is what DeepSpeed's external parameters are for: in an engine forward,
        # reading a partitioned parameter gathers it and registers it with the running module
        # (this one), whose hooks then fetch it for forward and backward and release it after, like
        # its own (deepspeed/runtime/zero/parameter_offload.py, ZeROOrderedDict). GatheredParameters
        # would cover this block only, not the backward pass.
        weight = head.weight.index_select(0, number_token_ids)
        bias = getattr(head, "bias", None)
        return nn.functional.linear(hidden, weight, None if bias is None else bias.index_select(0, number_token_ids))

    def _inputs(self, input_ids, features) -> dict:
        """input_ids, or for vector input the embeddings with the encoder's soft tokens spliced in."""
        if self.encoder is None or features is None:
            return {"input_ids": input_ids}
        embeds = self.lm.get_input_embeddings()(input_ids)
        return {"inputs_embeds": splice_embeddings(embeds, input_ids, self.encoder(features), self.placeholder_id)}

    def split_state(self, state: dict) -> tuple[dict, dict]:
        """Module state dict → (HF LM weights under HF names, encoder weights)."""
        lm = {k[len("lm."):]: v for k, v in state.items() if k.startswith("lm.")}
        enc = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
        return lm, enc


def prompt_embeddings(embed_matrix: torch.Tensor, encoder: FeatureEncoder, prompts: list[list[int]],
                      features: np.ndarray, placeholder_id: int) -> list[torch.Tensor]:
    """Per-prompt [T, H] embeddings for the engine (vLLM's prompt_embeds input)."""
    with torch.no_grad():
        # A copy: features may be a read-only array from the Ray object store, which torch warns about.
        soft = encoder(torch.tensor(np.asarray(features, dtype=np.float32)))
        out = []
        for i, prompt in enumerate(prompts):
            ids = torch.as_tensor(prompt, dtype=torch.long)
            embeds = embed_matrix[ids]
            out.append(splice_embeddings(embeds[None], ids[None], soft[i : i + 1], placeholder_id)[0])
        return out

"""Log-probabilities of number tokens under the learner's model — the same distribution the
engine samples from: logits restricted to the number tokens allowed at each position, divided by
the temperature, log-softmaxed (vLLM with logprobs_mode="processed_logprobs")."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rlreg.model.shared_prefix import answer_logits_shared, prompt_runs


class NumberHead:
    """Maps number-token logits at the L answer positions (answer_logits) to constrained number
    logprobs."""

    def __init__(self, number_token_ids: Sequence[int], allowed, device: str | torch.device = "cpu"):
        self.token_ids = torch.as_tensor(list(number_token_ids), dtype=torch.long, device=device)
        # A copy: `allowed` may be a read-only array from the Ray object store, which torch warns about.
        allowed = torch.tensor(np.asarray(allowed), dtype=torch.bool, device=device)
        self.bias = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))
        self.length = allowed.shape[0]

    def logprobs(self, number_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """number_logits [N, L, V_number] (the number tokens' columns, in token_ids order) → logp
        [N, L, V_number] (−inf where not allowed)."""
        logits = number_logits.float() + self.bias
        return torch.log_softmax(logits / max(temperature, 1e-6), dim=-1)


def pack_sequences(prompts: Sequence[Sequence[int]], completions: torch.Tensor, pad_id: int):
    """Right-padded [prompt + completion] rows, attention mask, and the index of the logit that
    predicts each completion token (position of the token before it)."""
    n, length = completions.shape
    lengths = [len(p) + length for p in prompts]
    width = max(lengths)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    predict_at = torch.empty((n, length), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        p = len(prompt)
        input_ids[i, :p] = torch.as_tensor(prompt, dtype=torch.long)
        input_ids[i, p : p + length] = completions[i]
        attention[i, : p + length] = 1
        predict_at[i] = torch.arange(p - 1, p + length - 1)
    return input_ids, attention, predict_at


def answer_logits(model, prompts: Sequence[Sequence[int]], completions: torch.Tensor, pad_id: int,
                  number_token_ids: torch.Tensor, features: torch.Tensor | None = None,
                  shared_prefix: bool = False) -> torch.Tensor:
    """Logits [N, L, len(number_token_ids)] of the number tokens at the L positions that predict
    the completion tokens: only these are computed (rlreg.model.encoder.PolicyModel.forward), not
    the whole vocabulary at every position. `model` is a PolicyModel or a DeepSpeed engine around
    one; `features` go to its encoder (vector input). With shared_prefix, rows that repeat the
    previous row's input (the G samples of one prompt) reuse one prompt pass
    (rlreg.model.shared_prefix); else a plain forward over each [prompt + completion]."""
    if shared_prefix:
        if len(prompt_runs(prompts, features)[0]) < len(prompts):
            return answer_logits_shared(model, prompts, completions, pad_id, number_token_ids, features)
    device = next(model.parameters()).device
    input_ids, attention, predict_at = pack_sequences(prompts, completions.cpu(), pad_id)
    extra = {} if features is None else {"features": features}
    out = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False,
                number_token_ids=number_token_ids.to(device), logits_at=predict_at.to(device), **extra)
    return out.logits


def gather_tokens(logp: torch.Tensor, number_index: torch.Tensor) -> torch.Tensor:
    """logp [N, L, V] and chosen number-token indices [N, L] → [N, L]."""
    return logp.gather(-1, number_index.unsqueeze(-1)).squeeze(-1)


def greedy_numbers(model, head: NumberHead, prompts: Sequence[Sequence[int]], pad_id: int,
                   features: torch.Tensor | None = None) -> torch.Tensor:
    """Constrained greedy decode on the learner's own model: number-token indices [N, L].
    One full forward per position (no KV cache): the completions are a handful of tokens."""
    n = len(prompts)
    chosen = torch.zeros((n, 0), dtype=torch.long, device=head.token_ids.device)
    for position in range(head.length):
        # Predict the next token by scoring a dummy token at `position` and reading its logits.
        probe = torch.cat([chosen, torch.zeros((n, 1), dtype=torch.long, device=chosen.device)], dim=1)
        logits = answer_logits(model, prompts, head.token_ids[probe], pad_id, head.token_ids, features)[:, position]
        step_logits = logits.float() + head.bias[position]
        chosen = torch.cat([chosen, step_logits.argmax(-1, keepdim=True)], dim=1)
    return chosen

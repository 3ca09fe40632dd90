"""Shared-prefix forward (as in "Prefix Grouper"): the G completions of one input share its
prompt, and decoding-regression completions are a handful of tokens while prompts are long. Each
distinct prompt is encoded once; its key/value cache is then indexed out to every completion that
follows it, and the completions attend to it. Gradients flow back through the cache into the one
prompt pass, so loss and gradients equal the plain forward's (tested to 1e-5)."""
from __future__ import annotations

from typing import Sequence

import torch


def prompt_runs(prompts: Sequence[Sequence[int]], features: torch.Tensor | None) -> tuple[list[int], torch.Tensor]:
    """Indices of the first row of each run of identical consecutive inputs, and each row's run."""
    firsts, owner = [], []
    for i, prompt in enumerate(prompts):
        same = bool(firsts) and list(prompts[firsts[-1]]) == list(prompt) and (
            features is None or torch.equal(features[firsts[-1]], features[i]))
        if not same:
            firsts.append(i)
        owner.append(len(firsts) - 1)
    return firsts, torch.as_tensor(owner, dtype=torch.long)


def answer_logits_shared(model, prompts: Sequence[Sequence[int]], completions: torch.Tensor, pad_id: int,
                         number_token_ids: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
    """Same result as rlreg.model.logprobs.answer_logits: number-token logits [N, L, V] predicting
    the L completion tokens (only those, see PolicyModel.forward), computing each distinct prompt once."""
    device = next(model.parameters()).device
    firsts, owner = prompt_runs(prompts, features)
    owner = owner.to(device)
    unique = [list(prompts[i]) for i in firsts]
    width = max(len(p) for p in unique)
    # Left padding: every prompt ends at the same column, so its last logits sit in one place.
    ids = torch.full((len(unique), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(unique), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(unique):
        ids[row, width - len(prompt):] = torch.as_tensor(prompt, device=device)
        mask[row, width - len(prompt):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    extra = {} if features is None else {"features": features[torch.as_tensor(firsts, device=features.device)]}
    number_token_ids = number_token_ids.to(device)
    last = torch.full((len(unique), 1), width - 1, dtype=torch.long, device=device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                number_token_ids=number_token_ids, logits_at=last, **extra)
    first_logits = out.logits[:, 0][owner]  # predicts completion token 0
    length = completions.shape[1]
    if length == 1:
        return first_logits.unsqueeze(1)
    cache = out.past_key_values
    cache.batch_select_indices(owner)  # index (not copy by hand): autograd routes gradients back
    follow = completions[:, :-1].to(device)
    follow_mask = torch.cat([mask[owner], torch.ones_like(follow)], dim=1)
    follow_positions = mask.sum(-1, keepdim=True)[owner] + torch.arange(length - 1, device=device)
    rest = model(input_ids=follow, attention_mask=follow_mask, position_ids=follow_positions,
                 past_key_values=cache, use_cache=True, number_token_ids=number_token_ids)
    return torch.cat([first_logits.unsqueeze(1), rest.logits], dim=1)

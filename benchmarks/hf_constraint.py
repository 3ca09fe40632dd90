"""The per-position number constraint for HF `generate` (the peers' side): the same allowed table
rlreg hands vLLM, as a transformers LogitsProcessor, so both sides sample the same distribution."""
from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList


class PositionConstraint(LogitsProcessor):
    """Masks every token not allowed at the current completion position. `prompt_width` is the
    (left-padded) prompt length of this generate call: position = current length − prompt_width."""

    def __init__(self, allowed: list[list[int]], prompt_width: int):
        self.allowed = allowed
        self.prompt_width = prompt_width
        self._mask: torch.Tensor | None = None

    def _table(self, vocab: int, device, dtype) -> torch.Tensor:
        if self._mask is None or self._mask.shape[1] != vocab:
            mask = torch.full((len(self.allowed), vocab), float("-inf"))
            for position, ids in enumerate(self.allowed):
                mask[position, ids] = 0.0
            self._mask = mask
        return self._mask.to(device=device, dtype=dtype)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        position = min(input_ids.shape[1] - self.prompt_width, len(self.allowed) - 1)
        return scores + self._table(scores.shape[-1], scores.device, scores.dtype)[position]


def constrained(allowed: list[list[int]], input_ids: torch.Tensor) -> LogitsProcessorList:
    return LogitsProcessorList([PositionConstraint(allowed, input_ids.shape[1])])

"""Per-position constrained decoding of number tokens inside vLLM.

vLLM's `allowed_token_ids` is one set for the whole completion; number formats need a set per
position (a sign first, then digits, then an exponent). This logits processor reads the table
from each request's `SamplingParams.extra_args[TABLE_KEY]` (a list, per position, of allowed
token ids) and masks every other token at that position. It is registered non-argmax-invariant,
so greedy decoding obeys it too, and with logprobs_mode="processed_logprobs" the returned
logprobs are those of the masked, temperature-scaled distribution — the one the learner uses."""
from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

TABLE_KEY = "rlreg_allowed"


class NumberConstraintProcessor(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.device = device
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        # Row index → (additive mask [length, vocab], the request's live output-token list).
        self.rows: dict[int, tuple[torch.Tensor, list[int]]] = {}
        self._masks: dict[tuple, torch.Tensor] = {}

    @classmethod
    def validate_params(cls, params) -> None:
        table = (params.extra_args or {}).get(TABLE_KEY)
        if table is not None and (not isinstance(table, (list, tuple)) or not all(table)):
            raise ValueError(f"extra_args[{TABLE_KEY!r}] must list, per position, at least one token id")

    def is_argmax_invariant(self) -> bool:
        return False

    def _mask(self, table) -> torch.Tensor:
        key = tuple(tuple(int(t) for t in row) for row in table)
        mask = self._masks.get(key)
        if mask is None:
            mask = torch.full((len(key), self.vocab_size), float("-inf"), device=self.device)
            for position, allowed in enumerate(key):
                mask[position, list(allowed)] = 0.0
            self._masks[key] = mask
        return mask

    def _new_state(self, params, _prompt_ids, output_ids):
        table = (params.extra_args or {}).get(TABLE_KEY)
        return None if table is None else (self._mask(table), output_ids)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        # Group rows that share one table (the usual case) into one gather + add.
        groups: dict[int, tuple[torch.Tensor, list[int], list[int]]] = {}
        for row, (mask, output_ids) in self.rows.items():
            position = len(output_ids)
            if position >= mask.shape[0]:
                position = mask.shape[0] - 1  # past the end (max_tokens stops us first): keep constraining
            entry = groups.setdefault(id(mask), (mask, [], []))
            entry[1].append(row)
            entry[2].append(position)
        for mask, rows, positions in groups.values():
            row_index = torch.tensor(rows, device=logits.device)
            logits[row_index] += mask[torch.tensor(positions, device=mask.device)].to(logits.dtype)
        return logits


PROCESSOR_FQCN = f"{__name__}:{NumberConstraintProcessor.__name__}"

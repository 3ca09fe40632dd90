"""Prompt text → token ids, done by rlreg (not by vLLM or transformers) so that the engine and
the learner see exactly the same ids."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rlreg.errors import DataError
from rlreg.model.build import ModelMeta, encoder_spec
from rlreg.numbers.registry import build_number_tokenizer


class PromptCodec:
    def __init__(self, model_dir: str | Path):
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        self.meta = ModelMeta.load(model_dir)
        self._tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.number_ids = np.asarray(self.meta.number_token_ids, dtype=np.int64)
        self._hf_to_number = {hf: i for i, hf in enumerate(self.meta.number_token_ids)}

    @property
    def number_length(self) -> int:
        # Only some tokenizer specs store their length; the built tokenizer always knows it.
        return build_number_tokenizer(self.meta.number_tokenizer).length

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """[bos] + BPE(text) + [answer]; a prompt too long for the model is an error naming its row."""
        limit = self.meta.max_positions - self.number_length
        out = []
        for row, enc in enumerate(self._tok.encode_batch(list(texts), add_special_tokens=False)):
            ids = [self.meta.bos_id, *enc.ids, self.meta.answer_id]
            if len(ids) > limit:
                raise DataError(f"prompt row {row} has {len(ids)} tokens but model.max_positions="
                                f"{self.meta.max_positions} leaves room for {limit}; raise model.max_positions")
            out.append(ids)
        return out

    def vector_prompt(self) -> list[int]:
        """[bos, <feat> × soft_tokens, answer]: the encoder's soft tokens replace the placeholders."""
        spec = encoder_spec(self.model_dir)
        if spec is None or self.meta.feature_id is None:
            raise DataError(f"{self.model_dir} has no feature encoder; it cannot take vector input")
        return [self.meta.bos_id, *[self.meta.feature_id] * spec["soft_tokens"], self.meta.answer_id]

    def to_number_ids(self, hf_ids: Sequence[int]) -> list[int]:
        """HF token ids → number-tokenizer indices; a non-number token becomes -1 (decodes invalid)."""
        return [self._hf_to_number.get(int(t), -1) for t in hf_ids]

    def allowed_hf_ids(self, number_allowed: np.ndarray) -> list[list[int]]:
        """Per-position allowed table over number tokens → per-position lists of HF ids."""
        return [self.number_ids[row].tolist() for row in number_allowed.astype(bool)]

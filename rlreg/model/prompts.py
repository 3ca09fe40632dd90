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
        self._chat_tokenizer = None
        self.number_ids = np.asarray(self.meta.number_token_ids, dtype=np.int64)
        allowed = build_number_tokenizer(self.meta.number_tokenizer).allowed
        self.number_length = allowed.shape[0]
        # Per position, HF id → number-token index: with numbers.surface=text one HF id ("+") can
        # stand for different number tokens at different positions (sign, exponent sign).
        self._hf_to_number = [{int(self.number_ids[i]): int(i) for i in np.flatnonzero(row)} for row in allowed]

    def _wrap(self, ids: list[int], bos: bool = True) -> list[int]:
        head = [self.meta.bos_id] if bos and self.meta.bos_id is not None else []
        tail = [self.meta.answer_id] if self.meta.answer_id is not None else []
        return [*head, *ids, *tail]

    def encode(self, texts: Sequence[str], chat_template: bool = False) -> list[list[int]]:
        """[bos] + BPE(text) + [answer] (bos and answer where the model has them), or with
        `chat_template` the text as a user turn of the tokenizer's chat template, which writes its
        own start tokens. A prompt too long for the model is an error naming its row."""
        limit = self.meta.max_positions - self.number_length
        texts = self._chat(texts) if chat_template else list(texts)
        out = []
        for row, enc in enumerate(self._tok.encode_batch(texts, add_special_tokens=False)):
            ids = self._wrap(enc.ids, bos=not chat_template)
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
        return self._wrap([self.meta.feature_id] * spec["soft_tokens"])

    def _chat(self, texts: Sequence[str]) -> list[str]:
        if self._chat_tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            if not getattr(tokenizer, "chat_template", None):
                raise DataError(f"data.chat_template is true but the tokenizer in {self.model_dir} has no chat "
                                f"template; set data.chat_template: false or use a chat model")
            self._chat_tokenizer = tokenizer
        return [self._chat_tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                         add_generation_prompt=True) for text in texts]

    def to_number_ids(self, hf_ids: Sequence[int]) -> list[int]:
        """HF token ids → number-tokenizer indices, position by position; a token the format does
        not allow at its position becomes -1 (decodes invalid)."""
        last = len(self._hf_to_number)
        return [self._hf_to_number[p].get(int(t), -1) if p < last else -1 for p, t in enumerate(hf_ids)]

    def allowed_hf_ids(self, number_allowed: np.ndarray) -> list[list[int]]:
        """Per-position allowed table over number tokens → per-position lists of HF ids."""
        return [self.number_ids[row].tolist() for row in number_allowed.astype(bool)]

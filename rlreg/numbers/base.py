"""The NumberTokenizer contract: a fixed-length, position-constrained way to write a float as tokens.

Subclasses supply the vocabulary, the per-position allowed table, a vectorised decoder for
sequences that already passed the table (`_values`), an encoder (`encode_ids`) and the two hooks
of the expert rule (`_compare_prefix`, `_extreme_next`). Validation, string/id conversion,
batch decoding and the expert rule itself live here, once.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from rlreg.errors import ConfigError, DataError, InvalidNumber


def spelling(token: str) -> str:
    """The plain text a number token stands for: "<d7>" → "7", "<+>" → "+", "<E->" → "-" (ieee's
    exponent sign), "<E-2>" → "e-2" (p10's exponent). A pretrained model's new number tokens start
    from the embeddings of this text, and numbers.surface=text writes it with the model's own tokens."""
    inner = token[1:-1] if token.startswith("<") and token.endswith(">") else token
    if inner.startswith("d") and inner[1:].isdigit():
        return inner[1:]
    if inner in ("E+", "E-"):
        return inner[1]
    if inner.startswith("E"):
        return "e" + inner[1:]
    return inner


class NumberTokenizer(ABC):
    """Writes floats in [low, high] as exactly `length` tokens from `tokens`.

    Invariants every subclass keeps (the property tests check them):
    - every sequence whose token at each position is allowed by `allowed` decodes to a finite float;
    - |decode(encode(y)) - y| <= resolution(y) for every y in [low, high];
    - describe() holds everything `build_number_tokenizer` needs to rebuild an identical tokenizer.
    """

    name: str = ""  # registry name, set by each subclass
    tokens: list[str]
    length: int
    allowed: np.ndarray  # bool [length, len(tokens)]
    low: float
    high: float
    # numeric value of each digit token (NaN for sign / exponent tokens): NTL and DIST2 losses
    digit_values: np.ndarray
    # positions that hold digit tokens
    digit_positions: tuple[int, ...]

    def _finish_init(self) -> None:
        """Derived lookups; subclasses call this once tokens and allowed are set."""
        if len(set(self.tokens)) != len(self.tokens):
            raise AssertionError(f"{self.name}: duplicate tokens in vocabulary")
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        self.allowed = np.asarray(self.allowed, dtype=bool)
        self.allowed.setflags(write=False)
        assert self.allowed.shape == (self.length, len(self.tokens))
        values = np.full(len(self.tokens), np.nan)
        for i, tok in enumerate(self.tokens):
            if tok.startswith("<d") and tok[2:-1].isdigit():
                values[i] = float(tok[2:-1])
        self.digit_values = values
        self.digit_values.setflags(write=False)
        # any sequence the table allows; fills invalid rows in decode_many so _values never
        # sees a disallowed token
        self._filler_ids = np.argmax(self.allowed, axis=1)

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def encode_ids(self, y: float) -> list[int]:
        """Token ids of y; raises DataError if y is not finite or outside [low, high]."""

    @abstractmethod
    def _values(self, ids: np.ndarray) -> np.ndarray:
        """float64 [N] values of int [N, length] id rows that all pass the allowed table."""

    @abstractmethod
    def resolution(self, y: float) -> float:
        """Upper bound on |decode(encode(y)) - y| for this y (format step plus float64 rounding)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-serialisable spec; `build_number_tokenizer(spec)` rebuilds this tokenizer."""

    @abstractmethod
    def _compare_prefix(self, prefix: Sequence[int], target: Sequence[int]) -> int:
        """Order of the prefix's completions against y's encoding `target`, in value terms:
        0 while undecided (prefix still consistent with target), +1 once every completion is
        above it, -1 once every completion is below it."""

    @abstractmethod
    def _extreme_next(self, prefix: Sequence[int], largest: bool) -> int:
        """Next id that starts the largest (or smallest) valued completion of the prefix."""

    # ------------------------------------------------------------------ encoding
    def encode(self, y: float) -> list[str]:
        return [self.tokens[i] for i in self.encode_ids(y)]

    def _check_encodable(self, y: float) -> float:
        try:
            y = float(y)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{self.name}: cannot encode {y!r}: not a number") from exc
        if not math.isfinite(y):
            raise DataError(f"{self.name}: cannot encode {y}: not finite")
        if not (self.low <= y <= self.high):
            raise DataError(
                f"{self.name}: cannot encode {y}: outside the representable range "
                f"[{self.low}, {self.high}] (scale or clip targets first)"
            )
        return y

    # ------------------------------------------------------------------ decoding
    def decode(self, tokens: Sequence[str]) -> float:
        """Float for a token-string sequence; InvalidNumber for anything that is not one."""
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
            raise InvalidNumber(f"expected a sequence of {self.length} token strings, got {type(tokens).__name__}")
        ids = []
        for pos, tok in enumerate(tokens):
            tid = self.token_to_id.get(tok) if isinstance(tok, str) else None
            if tid is None:
                raise InvalidNumber(f"unknown token {tok!r}", pos)
            ids.append(tid)
        return self.decode_ids(ids)

    def decode_ids(self, ids: Sequence[int]) -> float:
        """Float for a sequence of token ids; InvalidNumber naming the first fault."""
        try:
            n = len(ids)
        except TypeError:
            raise InvalidNumber(f"expected a sequence of {self.length} token ids, got {type(ids).__name__}") from None
        if n != self.length:
            raise InvalidNumber(f"expected {self.length} tokens, got {n}")
        row = np.empty(self.length, dtype=np.int64)
        for pos, raw in enumerate(ids):
            try:
                tid = operator.index(raw)
            except TypeError:
                raise InvalidNumber(f"token id {raw!r} is not an integer", pos) from None
            if not 0 <= tid < len(self.tokens):
                raise InvalidNumber(f"token id {tid} outside vocabulary of {len(self.tokens)}", pos)
            if not self.allowed[pos, tid]:
                raise InvalidNumber(f"token {self.tokens[tid]!r} not allowed here", pos)
            row[pos] = tid
        return float(self._values(row[None, :])[0])

    def decode_many(self, seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(values float64 [N], valid bool [N]); invalid rows get NaN and False, never an exception."""
        ids, ok = self._as_id_matrix(seqs)
        in_vocab = (ids >= 0) & (ids < len(self.tokens))
        safe = np.where(in_vocab, ids, 0)
        positions = np.arange(self.length)[None, :]
        valid = ok & np.all(in_vocab & self.allowed[positions, safe], axis=1)
        values = np.full(len(valid), np.nan)
        if valid.any():
            rows = np.where(valid[:, None], safe, self._filler_ids[None, :])
            values[valid] = self._values(rows)[valid]
        return values, valid

    def _as_id_matrix(self, seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """int64 [N, length] (-1 where unusable) and a per-row flag for length/type problems."""
        if isinstance(seqs, np.ndarray) and seqs.ndim == 2 and np.issubdtype(seqs.dtype, np.integer):
            if seqs.shape[1] == self.length:
                return seqs.astype(np.int64, copy=False), np.ones(len(seqs), dtype=bool)
            return np.full((len(seqs), self.length), -1, np.int64), np.zeros(len(seqs), dtype=bool)
        rows = list(seqs)
        ids = np.full((len(rows), self.length), -1, np.int64)
        ok = np.zeros(len(rows), dtype=bool)
        for r, seq in enumerate(rows):
            try:
                if len(seq) != self.length:
                    continue
                ids[r] = [operator.index(x) for x in seq]
                ok[r] = True
            except (TypeError, ValueError, OverflowError):
                ids[r] = -1
        return ids, ok

    # ------------------------------------------------------------------ constrained decoding
    def allowed_ids(self, position: int) -> list[int]:
        """Token ids allowed at `position` (vLLM's allowed_token_ids for that step)."""
        return np.flatnonzero(self.allowed[position]).tolist()

    # ------------------------------------------------------------------ GenRe² expert targets
    def expert_next_ids(self, y: float, prefix_ids: Sequence[int]) -> int:
        """Error-minimising next token id after `prefix_ids` for target y (GenRe²'s expert).

        While the prefix equals y's encoding it is y's next token; once the prefix is already
        above y it is the token starting the smallest completion, once below the largest.
        y outside [low, high] is clipped first: the nearest representable value is then the
        error-minimising target.
        """
        prefix = list(prefix_ids)
        if len(prefix) >= self.length:
            raise InvalidNumber(f"prefix of {len(prefix)} tokens leaves nothing to predict (length {self.length})")
        for pos, raw in enumerate(prefix):
            try:
                tid = operator.index(raw)
            except TypeError:
                raise InvalidNumber(f"token id {raw!r} is not an integer", pos) from None
            if not (0 <= tid < len(self.tokens) and self.allowed[pos, tid]):
                raise InvalidNumber(f"token id {tid} not allowed here", pos)
            prefix[pos] = tid
        y = self._clip_target(y)
        return self._expert_next(y, prefix, self.encode_ids(y))

    def _expert_next(self, y: float, prefix: list[int], target: list[int]) -> int:
        order = self._compare_prefix(prefix, target)
        if order == 0:
            return target[len(prefix)]
        return self._extreme_next(prefix, largest=order < 0)

    def expert_ids_for_sequence(self, y: float, ids: Sequence[int]) -> list[int]:
        """Expert next id at every position of a sampled sequence (prefixes ids[:t])."""
        return [self.expert_next_ids(y, ids[:t]) for t in range(self.length)]

    def _clip_target(self, y: float) -> float:
        y = float(y)
        if not math.isfinite(y):
            raise DataError(f"{self.name}: expert target {y} is not finite")
        return min(max(y, self.low), self.high)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "tokenizer")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NumberTokenizer) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.describe().items())))


def check_int(key: str, value: Any, lo: int, hi: int) -> int:
    """Config-range check shared by the tokenizers; names the config key at fault."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"numbers.{key} must be an integer in {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"numbers.{key} must be in {lo}..{hi}, got {value}")
    return int(value)


def scaled_power_of_ten(mantissa: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """mantissa * 10**exponent, correctly rounded where |exponent| <= 22 (powers of ten are exact
    floats there, so a single multiply or divide rounds once, as float('1234e-3') does)."""
    mantissa = mantissa.astype(np.float64)
    exponent = exponent.astype(np.int64)
    out = np.empty_like(mantissa)
    neg = exponent < 0
    out[neg] = mantissa[neg] / np.power(10.0, -exponent[neg])
    out[~neg] = mantissa[~neg] * np.power(10.0, exponent[~neg])
    return out

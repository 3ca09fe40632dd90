"""NormalizedDigits: y in [0, 1] written as its first `length` base-b digits (GenRe²'s format)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rlreg.numbers.base import NumberTokenizer, check_int
from rlreg.numbers.registry import register_number_tokenizer


@register_number_tokenizer
class NormalizedDigits(NumberTokenizer):
    """y in [0, 1] -> `length` digit tokens `<d0>`..`<d{base-1}>`, most significant first.

    Encoding truncates: the digits are those of k = floor(y * base**length), i.e. the index of the
    bin [k, k+1) / base**length that holds y; y = 1.0 goes to the last bin. Decoding returns the
    bin centre (k + 1/2) / base**length, so the error is at most base**-length / 2 (half a bin)
    rather than a whole bin for a floor decode. Every digit is allowed at every position.
    Paper defaults: base 2, 8 digits.
    """

    name = "normalized"

    def __init__(self, base: int = 2, length: int = 8):
        self.base = check_int("base", base, 2, 10)
        self.length = check_int("length", length, 1, 16)
        self.tokens = [f"<d{d}>" for d in range(self.base)]
        self.allowed = np.ones((self.length, self.base), dtype=bool)
        self.low, self.high = 0.0, 1.0
        self.digit_positions = tuple(range(self.length))
        self._bins = self.base**self.length  # <= 10**16 < 2**63: int64 is safe
        self._place = np.array([self.base ** (self.length - 1 - i) for i in range(self.length)], dtype=np.int64)
        self._finish_init()

    def encode_ids(self, y: float) -> list[int]:
        y = self._check_encodable(y)
        num, den = y.as_integer_ratio()  # exact: y * base**length can exceed 2**53
        k = min(num * self._bins // den, self._bins - 1)
        digits = []
        for _ in range(self.length):
            k, d = divmod(k, self.base)
            digits.append(d)
        return digits[::-1]  # digit ids equal digit values

    def _values(self, ids: np.ndarray) -> np.ndarray:
        k = ids @ self._place
        return (2 * k + 1).astype(np.float64) / float(2 * self._bins)

    def resolution(self, y: float) -> float:
        self._check_encodable(y)
        # half a bin, plus float64 rounding of the centre (matters only when base**length > 2**52)
        return 0.5 / self._bins + 2 * float(np.spacing(1.0))

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": self.name, "base": self.base, "length": self.length}

    def _compare_prefix(self, prefix: Sequence[int], target: Sequence[int]) -> int:
        # digits are ordered like values, so the first differing digit decides
        for got, want in zip(prefix, target):
            if got != want:
                return 1 if got > want else -1
        return 0

    def _extreme_next(self, prefix: Sequence[int], largest: bool) -> int:
        return self.base - 1 if largest else 0

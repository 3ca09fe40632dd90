"""P10: sign, M mantissa digits, one exponent token (regress-lm's P10 layout)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from rlreg.errors import ConfigError, DataError
from rlreg.numbers.base import NumberTokenizer, check_int, scaled_power_of_ten
from rlreg.numbers.registry import register_number_tokenizer

PLUS, MINUS = 0, 1
DIGIT0 = 2  # id of <d0>; <dk> is DIGIT0 + k
EXP0 = 12  # id of <E{min_exponent}>


@register_number_tokenizer
class P10(NumberTokenizer):
    """y = sign * int(d_1..d_M) * 10**k, written as

        <+>|<->  d_1..d_M  <E{k}>        (length = M + 2, k in [min_exponent, max_exponent])

    e.g. M=4: 1234.5 -> <+> <d1> <d2> <d3> <d4> <E0>  (round-half-even: 1234.5 -> 1234).

    - encode picks the smallest k whose rounded mantissa fits in M digits, so the mantissa is
      normalised (leading digit non-zero) whenever |y| >= 10**(M - 1 + min_exponent); smaller
      magnitudes keep k = min_exponent with leading zeros (subnormal-like), down to exact zero
      (all <d0>, <E{min_exponent}>).
    - The allowed table permits every digit at every digit position, so non-normalised sequences
      also decode (to their face value); every one is finite because max_exponent + M <= 300.
    - |y| above (10**M - 1) * 10**max_exponent is an encode error.
    """

    name = "p10"

    def __init__(self, mantissa_digits: int = 4, min_exponent: int = -10, max_exponent: int = 10):
        self.mantissa_digits = M = check_int("mantissa_digits", mantissa_digits, 1, 15)
        self.min_exponent = check_int("min_exponent", min_exponent, -300, 300 - M)
        self.max_exponent = check_int("max_exponent", max_exponent, -300, 300 - M)
        if self.max_exponent < self.min_exponent:
            raise ConfigError(
                f"numbers.max_exponent must be >= numbers.min_exponent, got {max_exponent} < {min_exponent}"
            )
        self.length = M + 2
        self.exponents = list(range(self.min_exponent, self.max_exponent + 1))
        self.tokens = ["<+>", "<->"] + [f"<d{d}>" for d in range(10)] + [f"<E{k}>" for k in self.exponents]
        allowed = np.zeros((self.length, len(self.tokens)), dtype=bool)
        allowed[0, [PLUS, MINUS]] = True
        allowed[1 : M + 1, DIGIT0:EXP0] = True
        allowed[M + 1, EXP0:] = True
        self.allowed = allowed
        self.digit_positions = tuple(range(1, M + 1))
        self._place = 10 ** np.arange(M - 1, -1, -1, dtype=np.int64)
        self._finish_init()
        self.high = float(self._values(np.array([[PLUS] + [DIGIT0 + 9] * M + [len(self.tokens) - 1]]))[0])
        self.low = -self.high

    # ------------------------------------------------------------------ encode / decode
    def _mantissa_exponent(self, y: float) -> tuple[int, int]:
        """(integer mantissa < 10**M, exponent k) of |y|, rounded to nearest."""
        M = self.mantissa_digits
        if y == 0.0:
            return 0, self.min_exponent
        mantissa, exp = f"{abs(y):.{M - 1}e}".split("e")
        q, k = int(mantissa.replace(".", "")), int(exp) - (M - 1)
        if k < self.min_exponent:
            # round once more, exactly, at the coarser fixed exponent (no double rounding)
            k = self.min_exponent
            q = round(Fraction(abs(y)) / Fraction(10) ** k)
            if q >= 10**M:  # cannot happen for k < normalised exponent, kept as a guard
                raise DataError(f"{self.name}: internal rounding error for {y}")
        if k > self.max_exponent:
            raise DataError(f"{self.name}: cannot encode {y}: needs exponent {k} above {self.max_exponent}")
        return q, k

    def encode_ids(self, y: float) -> list[int]:
        y = self._check_encodable(y)
        q, k = self._mantissa_exponent(y)
        digits = f"{q:0{self.mantissa_digits}d}"
        return (
            [MINUS if y < 0 else PLUS]
            + [DIGIT0 + int(c) for c in digits]
            + [EXP0 + k - self.min_exponent]
        )

    def _values(self, ids: np.ndarray) -> np.ndarray:
        M = self.mantissa_digits
        sign = np.where(ids[:, 0] == MINUS, -1.0, 1.0)
        mantissa = (ids[:, 1 : M + 1] - DIGIT0) @ self._place
        exponent = ids[:, M + 1] - EXP0 + self.min_exponent
        values = sign * scaled_power_of_ten(mantissa, exponent)
        return np.where(values == 0.0, 0.0, values)  # no -0.0

    def resolution(self, y: float) -> float:
        y = self._check_encodable(y)
        _, k = self._mantissa_exponent(y)
        # half a unit of the last digit, plus float64 rounding of the decoded value
        return 0.5 * 10.0**k * (1 + 1e-12) + 4 * float(np.spacing(abs(y)))

    def describe(self) -> dict[str, Any]:
        return {
            "tokenizer": self.name,
            "mantissa_digits": self.mantissa_digits,
            "min_exponent": self.min_exponent,
            "max_exponent": self.max_exponent,
        }

    # ------------------------------------------------------------------ expert rule hooks
    def _expert_next(self, y: float, prefix: list[int], target: list[int]) -> int:
        if len(prefix) < self.length - 1:
            return super()._expert_next(y, prefix, target)
        if self._compare_prefix(prefix, target) == 0:
            return target[-1]
        # The exponent comes last, after the mantissa is fixed: the error-minimising token is
        # then simply the exponent that brings sign * mantissa * 10**k nearest to y.
        rows = np.array([prefix + [EXP0 + i] for i in range(len(self.exponents))])
        return EXP0 + int(np.argmin(np.abs(self._values(rows) - y)))

    def _compare_prefix(self, prefix: Sequence[int], target: Sequence[int]) -> int:
        # Digits are compared as if the exponent were the target's (it comes last), which is
        # the token-by-token reading of the rule; signs flip the order for negatives.
        if not prefix:
            return 0
        if prefix[0] != target[0]:
            return 1 if prefix[0] == PLUS else -1
        direction = 1 if target[0] == PLUS else -1
        for got, want in zip(prefix[1 : self.mantissa_digits + 1], target[1 : self.mantissa_digits + 1]):
            if got != want:
                return direction * (1 if got > want else -1)
        return 0

    def _extreme_next(self, prefix: Sequence[int], largest: bool) -> int:
        big = largest if prefix[0] == PLUS else not largest
        return DIGIT0 + (9 if big else 0)

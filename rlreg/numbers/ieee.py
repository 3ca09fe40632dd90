"""IEEEStyle: sign, exponent sign, exponent digits, normalised mantissa digits (base 10)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rlreg.errors import DataError
from rlreg.numbers.base import NumberTokenizer, check_int, scaled_power_of_ten
from rlreg.numbers.registry import register_number_tokenizer

PLUS, MINUS, EXP_PLUS, EXP_MINUS = 0, 1, 2, 3
DIGIT0 = 4  # id of <d0>; <dk> is DIGIT0 + k


@register_number_tokenizer
class IEEEStyle(NumberTokenizer):
    """y = sign * d.ddd * 10**(±eee), written as

        <+>|<->  <E+>|<E->  e_1..e_E  m_1..m_M        (length = 2 + E + M)

    e.g. E=2, M=4: -0.01234 -> <-> <E-> <d0> <d2> <d1> <d2> <d3> <d4>   (-1.234e-02)

    - The mantissa is rounded to the nearest M significant digits; a carry moves the exponent
      (9.9996 -> 1.000e+01). Its first digit is 1..9 (the allowed table forbids <d0> there), so
      every allowed sequence is a normalised number and value order follows token order.
    - Exponent zero is written <E+> 0..0 by encode; <E-> 0..0 also decodes (to the same value).
    - Zero: the smallest-magnitude code, <E-> 9..9 with mantissa 1 0..0 (nominally
      1e-(10**E - 1)), is reserved for exactly 0. Magnitudes that round to it or below become 0
      (sign kept in the tokens, decoded as 0.0); the next code up is the smallest non-zero value.
    - |y| above 9.99..9e(10**E - 1) is an encode error. E is 1 or 2 so that every allowed
      sequence is a finite float64; M is at most 15 (float64 holds ~15.9 significant digits).
    """

    name = "ieee"

    def __init__(self, exponent_digits: int = 2, mantissa_digits: int = 4):
        self.exponent_digits = check_int("exponent_digits", exponent_digits, 1, 2)
        self.mantissa_digits = check_int("mantissa_digits", mantissa_digits, 1, 15)
        E, M = self.exponent_digits, self.mantissa_digits
        self.length = 2 + E + M
        self.max_exponent = 10**E - 1
        self.tokens = ["<+>", "<->", "<E+>", "<E->"] + [f"<d{d}>" for d in range(10)]
        allowed = np.zeros((self.length, len(self.tokens)), dtype=bool)
        allowed[0, [PLUS, MINUS]] = True
        allowed[1, [EXP_PLUS, EXP_MINUS]] = True
        allowed[2:, DIGIT0:] = True
        allowed[2 + E, DIGIT0] = False  # normalised mantissa: leading digit 1..9
        self.allowed = allowed
        self.digit_positions = tuple(range(2, self.length))
        self._exp_place = 10 ** np.arange(E - 1, -1, -1, dtype=np.int64)
        self._mant_place = 10 ** np.arange(M - 1, -1, -1, dtype=np.int64)
        self._finish_init()
        largest = [PLUS, EXP_PLUS] + [DIGIT0 + 9] * (E + M)
        self.high = float(self._values(np.array([largest]))[0])
        self.low = -self.high

    # ------------------------------------------------------------------ encode / decode
    def _decimal(self, y: float) -> tuple[bool, int, str] | None:
        """(negative, exponent, M mantissa digits) of y rounded to M significant digits, or None
        when y becomes the reserved zero code."""
        M = self.mantissa_digits
        if y == 0.0:
            return None
        mantissa, exp = f"{abs(y):.{M - 1}e}".split("e")
        digits, e = mantissa.replace(".", ""), int(exp)
        if e > self.max_exponent:
            raise DataError(f"{self.name}: cannot encode {y}: exponent {e} above {self.max_exponent}")
        if e < -self.max_exponent or (e == -self.max_exponent and digits == "1" + "0" * (M - 1)):
            return None
        return y < 0, e, digits

    def encode_ids(self, y: float) -> list[int]:
        y = self._check_encodable(y)
        E, M = self.exponent_digits, self.mantissa_digits
        dec = self._decimal(y)
        if dec is None:
            sign = MINUS if y < 0 else PLUS
            return [sign, EXP_MINUS] + [DIGIT0 + 9] * E + [DIGIT0 + 1] + [DIGIT0] * (M - 1)
        negative, e, digits = dec
        exp_digits = f"{abs(e):0{E}d}"
        return (
            [MINUS if negative else PLUS, EXP_MINUS if e < 0 else EXP_PLUS]
            + [DIGIT0 + int(c) for c in exp_digits]
            + [DIGIT0 + int(c) for c in digits]
        )

    def _values(self, ids: np.ndarray) -> np.ndarray:
        E, M = self.exponent_digits, self.mantissa_digits
        sign = np.where(ids[:, 0] == MINUS, -1.0, 1.0)
        exp_magnitude = (ids[:, 2 : 2 + E] - DIGIT0) @ self._exp_place
        exponent = np.where(ids[:, 1] == EXP_MINUS, -exp_magnitude, exp_magnitude)
        mantissa = (ids[:, 2 + E :] - DIGIT0) @ self._mant_place
        values = sign * scaled_power_of_ten(mantissa, exponent - (M - 1))
        is_zero = (exponent == -self.max_exponent) & (mantissa == 10 ** (M - 1))
        return np.where(is_zero, 0.0, values)

    def resolution(self, y: float) -> float:
        y = self._check_encodable(y)
        dec = self._decimal(y)
        if dec is None:
            return abs(y)  # flushed to the zero code
        _, e, _ = dec
        # half a unit in the last mantissa digit, plus float64 rounding of the decoded value
        return 0.5 * 10.0 ** (e - self.mantissa_digits + 1) * (1 + 1e-12) + 4 * float(np.spacing(abs(y)))

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": self.name, "exponent_digits": self.exponent_digits, "mantissa_digits": self.mantissa_digits}

    # ------------------------------------------------------------------ expert rule hooks
    def _compare_prefix(self, prefix: Sequence[int], target: Sequence[int]) -> int:
        if not prefix:
            return 0
        if prefix[0] != target[0]:
            return 1 if prefix[0] == PLUS else -1
        direction = 1 if target[0] == PLUS else -1  # for negatives a larger magnitude is a smaller value
        return direction * self._compare_magnitude(prefix, target)

    def _compare_magnitude(self, prefix: Sequence[int], target: Sequence[int]) -> int:
        """Magnitude order of the prefix's completions vs the target, same sign assumed.

        The exponent is compared as the interval of exponents the prefix can still reach, not
        token by token: <E-> 0..0 equals <E+> 0..0, so a differing exponent-sign token alone
        does not decide. Normalised mantissas make the exponent decide before the mantissa.
        """
        E = self.exponent_digits
        if len(prefix) < 2:
            return 0
        target_exp = self._exponent_of(target)
        known = [i - DIGIT0 for i in prefix[2 : 2 + E]]
        free = E - len(known)
        lead = int("".join(map(str, known)) or "0") * 10**free
        lo, hi = lead, lead + 10**free - 1
        if prefix[1] == EXP_MINUS:
            lo, hi = -hi, -lo
        if target_exp < lo:
            return 1
        if target_exp > hi:
            return -1
        for got, want in zip(prefix[2 + E :], target[2 + E :]):
            if got != want:
                return 1 if got > want else -1
        return 0  # exponent still open (interval holds the target's) or equal with equal digits

    def _exponent_of(self, ids: Sequence[int]) -> int:
        E = self.exponent_digits
        magnitude = int("".join(str(i - DIGIT0) for i in ids[2 : 2 + E]))
        return -magnitude if ids[1] == EXP_MINUS else magnitude

    def _extreme_next(self, prefix: Sequence[int], largest: bool) -> int:
        E = self.exponent_digits
        pos = len(prefix)
        big = largest if prefix[0] == PLUS else not largest  # want the larger magnitude?
        if pos == 1:
            return EXP_PLUS if big else EXP_MINUS
        if pos < 2 + E:
            exp_up = prefix[1] == EXP_PLUS  # larger digits raise the exponent only under <E+>
            return DIGIT0 + (9 if big == exp_up else 0)
        if big:
            return DIGIT0 + 9
        return DIGIT0 + (1 if pos == 2 + E else 0)

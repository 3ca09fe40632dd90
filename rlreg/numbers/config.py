"""NumbersConfig: the `numbers:` config section (number tokenizer and target scaler)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlreg.errors import ConfigError
from rlreg.numbers.registry import build_number_tokenizer
from rlreg.numbers.scalers import build_scaler

SURFACES = ("atomic", "text")


@dataclass
class NumbersConfig:
    """How targets are scaled and written as tokens.

    `tokenizer` picks the format ("normalized", "ieee", "p10"); only the fields that format takes
    are used (base/length for normalized; exponent_digits/mantissa_digits for ieee;
    mantissa_digits/min_exponent/max_exponent for p10). `scaler` maps raw targets to what the
    tokenizer writes ("zscore_minmax", "quantile", "signed_log" into [0, 1]; "identity" for
    ieee/p10); `scaler_margin` keeps the train range inside [margin, 1 - margin] so test values a
    little outside it stay representable.
    """

    tokenizer: str = "normalized"
    base: int = 2
    length: int = 8
    exponent_digits: int = 2
    mantissa_digits: int = 4
    min_exponent: int = -10
    max_exponent: int = 10
    scaler: str = "zscore_minmax"
    scaler_margin: float = 0.0
    # How number tokens reach the language model: "atomic" adds them to its tokenizer as new
    # tokens; "text" spells them with the tokenizer's own single-character tokens (digits, signs).
    surface: str = "atomic"

    def validate(self) -> "NumbersConfig":
        """Raise ConfigError naming the first bad key; returns self for chaining."""
        if self.surface not in SURFACES:
            raise ConfigError(f"numbers.surface must be one of {', '.join(SURFACES)}, got {self.surface!r}")
        build_number_tokenizer(self)  # the tokenizer classes own their parameter ranges
        margin = self.scaler_margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
            raise ConfigError(f"numbers.scaler_margin must be a number in [0, 0.5), got {margin!r}")
        build_scaler(self.scaler, margin=margin)
        return self

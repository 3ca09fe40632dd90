"""The `eval:` config section: how a model is evaluated by sampling."""
from __future__ import annotations

from dataclasses import dataclass, field

from rlreg.errors import ConfigError

AGGREGATION_CHOICES = ("auto", "mean", "median", "trimmed_mean")
BASELINE_NAMES = ("hgb", "ridge", "reghead")


@dataclass
class EvalConfig:
    samples: int = 32  # K per input (the paper evaluates with 128)
    temperature: float = 1.0
    aggregation: str = "auto"  # auto (best on validation) | mean | median | trimmed_mean
    chunk_inputs: int = 64  # inputs per engine call: bounds each remote wait
    n_boot: int = 1000
    plots: bool = True
    # Compared on the same splits: hgb, ridge, reghead (the LM with an MSE regression head; trains
    # with the sft section's budget, so it costs about as much as the supervised stage).
    baselines: list[str] = field(default_factory=lambda: ["hgb", "ridge"])

    def validate(self) -> None:
        if self.samples < 1 or self.chunk_inputs < 1:
            raise ConfigError("eval.samples and eval.chunk_inputs must be >= 1")
        unknown = set(self.baselines) - set(BASELINE_NAMES)
        if unknown:
            raise ConfigError(f"eval.baselines: unknown {sorted(unknown)}; choose from {', '.join(BASELINE_NAMES)}")
        if self.aggregation not in AGGREGATION_CHOICES:
            raise ConfigError(f"eval.aggregation must be one of {', '.join(AGGREGATION_CHOICES)}, "
                              f"got {self.aggregation!r}")

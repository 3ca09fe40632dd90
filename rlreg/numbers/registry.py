"""Name -> NumberTokenizer class registry, and building a tokenizer from a spec or a NumbersConfig."""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any, Mapping, TypeVar

from rlreg.errors import ConfigError

if TYPE_CHECKING:
    from rlreg.numbers.base import NumberTokenizer

NUMBER_TOKENIZERS: dict[str, type["NumberTokenizer"]] = {}
# Keys of the `numbers:` section that are not tokenizer parameters: a whole section is a valid spec.
SECTION_KEYS = ("tokenizer", "scaler", "scaler_margin", "surface")

T = TypeVar("T", bound=type)


def register_number_tokenizer(cls: T) -> T:
    """Class decorator: makes `cls` buildable by its `name`."""
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    if name in NUMBER_TOKENIZERS and NUMBER_TOKENIZERS[name] is not cls:
        raise ValueError(f"number tokenizer {name!r} is already registered by {NUMBER_TOKENIZERS[name].__name__}")
    NUMBER_TOKENIZERS[name] = cls
    return cls


def number_tokenizer_names() -> list[str]:
    return sorted(NUMBER_TOKENIZERS)


def _parameters(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def build_number_tokenizer(spec: "Mapping[str, Any]") -> "NumberTokenizer":
    """Tokenizer from a describe() dict or a `numbers:` section (a NumbersConfig).

    The spec names the class under "tokenizer" and may hold the parameters of any registered
    tokenizer (ignored when this class does not take them, so a whole section works); any other
    key is a ConfigError, as are an unknown tokenizer name and out-of-range parameters.
    """
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        spec = dataclasses.asdict(spec)
    elif not isinstance(spec, Mapping):
        raise ConfigError(f"numbers: expected a mapping or NumbersConfig, got {type(spec).__name__}")
    name = spec.get("tokenizer")
    if name not in NUMBER_TOKENIZERS:
        raise ConfigError(f"numbers.tokenizer must be one of {number_tokenizer_names()}, got {name!r}")
    cls = NUMBER_TOKENIZERS[name]
    params = _parameters(cls)
    known = set(SECTION_KEYS).union(*(_parameters(c) for c in NUMBER_TOKENIZERS.values()))
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"numbers: unknown key {unknown[0]!r} (known: {sorted(known)})")
    return cls(**{k: spec[k] for k in params if k in spec})


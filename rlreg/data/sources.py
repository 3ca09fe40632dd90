"""Source registry: the prefix of `data.source` ("uci", "csv", ...) picks the loader."""
from __future__ import annotations

from typing import Callable

from rlreg.data.builtin import load_builtin
from rlreg.data.config import DataConfig
from rlreg.data.dataset import Dataset
from rlreg.data.jsonl import load_jsonl
from rlreg.data.memory import load_arrays
from rlreg.data.sqlcard import load_sqlcard
from rlreg.data.tabular import load_table
from rlreg.data.uci import load_uci
from rlreg.errors import ConfigError

# A loader gets the part after "PREFIX:" and the whole config.
Loader = Callable[[str, DataConfig], Dataset]

_LOADERS: dict[str, Loader] = {}


def register_source(prefix: str) -> Callable[[Loader], Loader]:
    """Decorator: `@register_source("mysrc")` makes `data.source: mysrc:NAME` call the function."""
    def add(loader: Loader) -> Loader:
        _LOADERS[prefix] = loader
        return loader
    return add


def known_sources() -> list[str]:
    return sorted(_LOADERS)


def split_source(source: str) -> tuple[str, str]:
    prefix, sep, spec = source.partition(":")
    if not sep or not spec:
        raise ConfigError(f"data.source must look like PREFIX:NAME with PREFIX one of "
                          f"{', '.join(known_sources())}; got {source!r}")
    return prefix.strip().lower(), spec.strip()


def load_dataset(cfg: DataConfig) -> Dataset:
    cfg.validate()
    prefix, spec = split_source(cfg.source)
    if prefix not in _LOADERS:
        raise ConfigError(f"data.source: unknown source prefix {prefix!r} in {cfg.source!r}; "
                          f"known prefixes: {', '.join(known_sources())}")
    return _LOADERS[prefix](spec, cfg)


register_source("uci")(load_uci)
register_source("csv")(load_table)
register_source("file")(load_table)  # same loader: the extension picks csv / tsv / parquet
register_source("sqlcard")(load_sqlcard)
register_source("jsonl")(load_jsonl)  # text fields + a numeric target, e.g. prompt, response, score
register_source("sklearn")(load_builtin)
register_source("array")(load_arrays)  # arrays handed in by Python code (RLRegressor)

"""The `data:` section of a run config, and where the shared data folder is found."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rlreg.errors import ConfigError, DataError

MISSING_POLICIES = ("error", "drop", "mean")
CATEGORICAL_ENCODINGS = ("onehot", "ordinal")
INPUT_KINDS = ("text", "vector")

# The environment variable that points at the shared data folder.
DATA_ENV = "RLREG_DATA"


@dataclass
class DataConfig:
    """Which data to load and how to split and render it.

    Only plain types, so the generic YAML loader (rlreg.configlib) can fill it."""

    # uci:NAME | csv:PATH | file:PATH (csv/tsv/parquet) | sqlcard:NAME | jsonl:PATH (text fields) | sklearn:NAME
    source: str = "sklearn:diabetes"
    target: str | None = None  # csv: a column name or index as text ("-1"); None = last column
    split: int = 0  # official split index, for sources that ship splits (uci)
    val_fraction: float = 0.1  # carved from the train part, seeded
    test_fraction: float = 0.2  # used only where the source has no official split
    seed: int = 0
    max_rows: int | None = None  # seeded subsample for quick runs
    missing: str = "error"  # missing feature values: error | drop | mean
    categorical: str = "onehot"  # onehot | ordinal
    input: str = "text"  # text prompts, or a standardised feature vector
    float_format: str = "{:.4g}"  # how feature values are written in text prompts
    prompt_template: str | None = None  # e.g. "age {age}, bmi {bmi}"; None = "name=value ..."
    # Wrap each prompt as a user turn with the tokenizer's chat template (pretrained chat models).
    chat_template: bool = False
    data_dir: str | None = None  # shared data folder; None = search (see resolve_data_dir)

    def validate(self) -> None:
        if not isinstance(self.source, str) or ":" not in self.source:
            raise ConfigError(f"data.source must look like PREFIX:NAME (e.g. uci:concrete, "
                              f"csv:path/to/file.csv, sklearn:diabetes), got {self.source!r}")
        if self.split < 0:
            raise ConfigError(f"data.split must be >= 0, got {self.split}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction must be in [0, 0.5), got {self.val_fraction}")
        if not 0.0 <= self.test_fraction < 0.9:
            raise ConfigError(f"data.test_fraction must be in [0, 0.9), got {self.test_fraction}")
        if self.seed < 0:
            raise ConfigError(f"data.seed must be >= 0, got {self.seed}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigError(f"data.max_rows must be a positive integer or null, "
                              f"got {self.max_rows}")
        for key, value, allowed in (("missing", self.missing, MISSING_POLICIES),
                                    ("categorical", self.categorical, CATEGORICAL_ENCODINGS),
                                    ("input", self.input, INPUT_KINDS)):
            if value not in allowed:
                raise ConfigError(f"data.{key} must be one of {', '.join(allowed)}, got {value!r}")
        try:
            written = self.float_format.format(1.5)
        except (ValueError, IndexError, KeyError) as err:
            raise ConfigError(f"data.float_format {self.float_format!r} cannot format a number "
                              f"({err}); use e.g. '{{:.4g}}'") from err
        if not isinstance(written, str) or written == self.float_format:
            raise ConfigError(f"data.float_format {self.float_format!r} has no {{}} placeholder")


def _repo_root() -> Path:
    # rlreg/data/config.py -> the folder that holds the rlreg package
    return Path(__file__).resolve().parents[2]


def data_dir_candidates() -> list[Path]:
    """The folders searched, in order, when neither data_dir nor RLREG_DATA is set."""
    cwd = Path.cwd()
    return [_repo_root().parent / "shared" / "data", cwd / "shared" / "data",
            cwd.parent / "shared" / "data"]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Find the shared data folder: `data_dir` if given, else $RLREG_DATA, else the first existing
    of <repo>/../shared/data, ./shared/data, ../shared/data.

    An explicit setting that does not exist is an error rather than a fall-through: silently
    reading a different folder than the one asked for would be worse than stopping."""
    if data_dir is not None and str(data_dir) != "":
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataError(f"data folder not found: data.data_dir={str(data_dir)!r} "
                            f"(resolved to {path.resolve()}) is not a directory")
        return path
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"data folder not found: ${DATA_ENV}={env!r} is not a directory")
        return path
    tried = data_dir_candidates()
    for path in tried:
        if path.is_dir():
            return path
    listing = ", ".join(str(p) for p in tried)
    raise DataError(f"data folder not found: data.data_dir and ${DATA_ENV} are unset and none of "
                    f"these exist: {listing}. Set data.data_dir or ${DATA_ENV}, or use a built-in "
                    f"source such as sklearn:diabetes")

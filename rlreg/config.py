"""The run configuration: one typed dataclass per section, each defined beside the package it
configures (in that package's config.py, which imports neither torch nor Ray).

YAML files hold the sections; `dotted.key=value` arguments override them; an unknown or
mistyped key is an error naming it (see configlib)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rlreg.actors.config import LearnerConfig, RayConfig, RewardConfig, SyncConfig
from rlreg.actors.placement import plan_for
from rlreg.configlib import apply_overrides, from_mapping, read_yaml, write_yaml
from rlreg.data.config import DataConfig
from rlreg.errors import ConfigError
from rlreg.evaluate.config import EvalConfig
from rlreg.model.config import EngineConfig, ModelConfig
from rlreg.numbers.config import NumbersConfig
from rlreg.train.config import LogConfig, RLConfig, SFTConfig
from rlreg.tune.config import TuneConfig, check_space_keys


@dataclass
class RunConfig:
    run_dir: str | None = None  # None: runs/<command>-<timestamp>
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    numbers: NumbersConfig = field(default_factory=NumbersConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)  # only `rlreg tune` reads it
    log: LogConfig = field(default_factory=LogConfig)  # MLflow / W&B tracking (off by default)

    def validate(self) -> None:
        check_space_keys(self.tune.space, RunConfig)
        if self.ray.colocate:  # the engine count and memory share colocation needs, before anything starts
            plan_for(self)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """YAML file (optional) + dotted overrides → validated RunConfig. Errors name the file."""
    mapping = read_yaml(path) if path else {}
    mapping = apply_overrides(mapping, list(overrides))
    try:
        return from_mapping(RunConfig, mapping)
    except ConfigError as err:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{err}") from err


def save_config(cfg: RunConfig, path: str | Path) -> None:
    write_yaml(cfg, path)

"""The `sft:` and `rl:` config sections: the supervised stage and the RL loop."""
from __future__ import annotations

from dataclasses import dataclass

from rlreg.algos.config import AlgoConfig, RLLossOptions, SFTLossOptions
from rlreg.errors import ConfigError

SFT_LOSSES = ("ce", "ntl_was", "dist2")


@dataclass
class SFTConfig:
    enabled: bool = True
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    loss: str = "ce"  # ce | ntl_was (CE + ntl_weight·NTL-WAS) | dist2
    ntl_weight: float = 0.3
    dist2_sigma: float = 1.0
    eval_every: int = 50
    patience: int = 4  # evaluations without a better validation score before stopping
    # Model selection: "rmse" = greedy-decode RMSE on validation (the token CE averages over all
    # positions, and the low-order digits' noise hides whether the leading digits still improve).
    select_by: str = "rmse"
    init_from: str | None = None  # a model directory to start from instead of training

    def validate(self) -> None:
        if self.select_by not in ("rmse", "loss"):
            raise ConfigError(f"sft.select_by must be rmse or loss, got {self.select_by!r}")
        if self.loss not in SFT_LOSSES:
            raise ConfigError(f"sft.loss must be one of {', '.join(SFT_LOSSES)}, got {self.loss!r}")
        for key in ("steps", "batch_size", "eval_every", "patience"):
            if getattr(self, key) < 1:
                raise ConfigError(f"sft.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"sft.lr must be > 0, got {self.lr}")

    def loss_options(self) -> SFTLossOptions:
        return SFTLossOptions(loss=self.loss, ntl_weight=self.ntl_weight, dist2_sigma=self.dist2_sigma)


@dataclass
class RLConfig(AlgoConfig):
    enabled: bool = True
    steps: int = 50
    batch_size: int = 8  # inputs per step
    group_size: int = 16  # G samples per input
    temperature: float = 1.0
    lr: float = 1e-4
    ppo_epochs: int = 1  # learner updates per batch (>1 wants clip_eps)
    sync_every: int = 1  # push weights to the engines every k steps
    rollout_workers: int = 1
    eval_every: int = 10  # validation RMSE every k steps (0: only at the end)
    eval_samples: int = 16
    checkpoint_every: int = 0  # 0: no intermediate checkpoints

    def validate(self) -> "RLConfig":
        super().validate()
        for key in ("steps", "batch_size", "group_size", "ppo_epochs", "sync_every", "rollout_workers",
                    "eval_samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"rl.{key} must be >= 1, got {getattr(self, key)}")
        if self.group_size < 2 and self.advantage in ("grpo", "rloo", "drgrpo"):
            raise ConfigError(f"rl.group_size must be >= 2 for rl.advantage={self.advantage}")
        if self.temperature <= 0:
            raise ConfigError(f"rl.temperature must be > 0, got {self.temperature}")
        if self.lr <= 0:
            raise ConfigError(f"rl.lr must be > 0, got {self.lr}")
        for key in ("eval_every", "checkpoint_every"):  # 0 turns them off
            if getattr(self, key) < 0:
                raise ConfigError(f"rl.{key} must be >= 0, got {getattr(self, key)}")
        return self

    def loss_options(self) -> RLLossOptions:
        return RLLossOptions(temperature=self.temperature, clip_eps=self.clip_eps, loss_agg=self.loss_agg,
                             kl_coef=self.kl_coef, kl_kind=self.kl_kind, kl_in=self.kl_in,
                             entropy_coef=self.entropy_coef, expert_ce_coef=self.expert_ce_coef)


WANDB_MODES = ("offline", "online")


@dataclass
class LogConfig:
    """The `log:` section: experiment tracking besides the run directory's JSONL and TensorBoard logs
    (rlreg.train.tracking). Each run gets the resolved config, per-step scalars, the final metrics,
    the plots and the checkpoint path. Needs `pip install -e '.[tracking]'` when turned on."""

    mlflow: bool = False  # log the run to MLflow
    mlflow_uri: str = ""  # tracking URI; "": a SQLite file in the run directory (RUN_DIR/mlflow.db)
    mlflow_experiment: str = "rlreg"  # MLflow experiment (created if missing)
    wandb: bool = False  # log the run to Weights & Biases
    wandb_mode: str = "offline"  # offline (files under RUN_DIR/wandb, no network; `wandb sync` later) | online
    wandb_project: str = "rlreg"

    def validate(self) -> None:
        if self.wandb_mode not in WANDB_MODES:
            raise ConfigError(f"log.wandb_mode must be one of {', '.join(WANDB_MODES)}, got {self.wandb_mode!r}")
        for key in ("mlflow_experiment", "wandb_project"):
            if not getattr(self, key):
                raise ConfigError(f"log.{key} must not be empty")

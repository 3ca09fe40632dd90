"""The task every benchmark runs on: scikit-learn's diabetes rows written as text prompts
(≈ 40–50 BPE tokens each), targets as 8 base-2 number tokens, a fresh Llama-style model of a
named size — or a pretrained Hugging Face checkpoint started through `model.pretrained` (a size
name registered with `pretrained_size`). Built once per benchmark in a temporary folder."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from benchmarks.common import SIZES

TASK = ["data.source=sklearn:diabetes", "data.input=text", "model.prompt_vocab=512", "model.max_positions=128",
        "numbers.tokenizer=normalized", "numbers.base=2", "numbers.length=8"]
# Same algorithm on both sides of the step benchmark: GRPO advantages, no KL, no expert CE,
# one on-policy update per batch, weights synced every step.
RL = ["rl.advantage=grpo", "rl.expert_ce_coef=0", "rl.kl_coef=0", "rl.ppo_epochs=1", "rl.sync_every=1",
      "rl.steps=100000", "rl.lr=0.00001", "learner.world_size=1", "learner.zero_stage=1",
      "ray.actor_start_timeout_s=900", "ray.call_timeout_s=900"]


# Size names that stand for a pretrained checkpoint directory (model.pretrained) instead of a
# from-scratch shape: measure_size and friends take them like any size (see pretrained_size).
PRETRAINED: dict[str, Path] = {}


def model_overrides(size: str, pretrained: Path | None = None) -> list[str]:
    pretrained = pretrained or PRETRAINED.get(size)
    if pretrained is not None:  # the checkpoint's architecture decides layers, hidden size and heads
        return [f"model.pretrained={Path(pretrained).resolve()}"]
    return [f"model.{k}={v}" for k, v in SIZES[size].items()]


def make_task(size: str, workdir: Path, extra: list[str] = (), dtype: str = "float32",
              pretrained: Path | None = None):
    """(config, task) for a model of `size` in `dtype` (model.dtype: the engine and the learner
    follow it), built under workdir; with `pretrained` (or a size registered by pretrained_size)
    the checkpoint directory is adopted through model.pretrained instead of building a model."""
    from rlreg.config import load_config
    from rlreg.train.task import prepare_task

    run_dir = Path(workdir) / f"task-{size}-{dtype}"
    cfg = load_config(None, [*TASK, *RL, *model_overrides(size, pretrained), f"model.dtype={dtype}", *extra,
                             f"run_dir={run_dir}"])
    return cfg, prepare_task(cfg, run_dir)


@contextlib.contextmanager
def pretrained_size(name: str, checkpoint: Path) -> Iterator[str]:
    """While open, size `name` means the checkpoint directory `checkpoint` (model.pretrained)."""
    PRETRAINED[name] = Path(checkpoint)
    try:
        yield name
    finally:
        PRETRAINED.pop(name, None)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A temporary folder for models and run directories (up to ~0.5 GB at 100 M), removed after."""
    path = Path(tempfile.mkdtemp(prefix="rlreg-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_ray(num_cpus: int = 4) -> None:
    """A private local Ray session (never another engineer's cluster). Logical CPUs are only
    scheduling tokens: 4 lets two engines, the learner and the reward actors all be placed.
    Ray runs its workers at niceness 15 by default; the peers run in this process at 0, so on a
    shared machine rlreg's actors would queue behind other users' jobs and the peer would not:
    both sides get niceness 0 here."""
    import os

    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def parameter_count(task) -> int:
    from rlreg.model.build import count_parameters

    return int(count_parameters(task.model_dir))

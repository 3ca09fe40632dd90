"""Ray session and remote waits: every `ray.get` in rlreg goes through `get_with_timeout`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from rlreg.errors import ConfigError, RemoteTimeout


@dataclass
class RayConfig:
    address: str | None = None  # None: join RAY_ADDRESS if set (inside `ray job submit`), else start locally
    num_cpus: int | None = None  # for a local session; None = all cores
    rollout_cpus: float = 0.5  # logical CPUs per rollout actor (fractions let roles share 2 cores)
    reward_cpus: float = 0.1
    learner_cpus: float = 0.5
    torch_threads: int = 0  # 0: as many as cores, set explicitly inside every actor
    actor_start_timeout_s: float = 300.0
    call_timeout_s: float = 900.0

    def validate(self) -> None:
        for key in ("rollout_cpus", "reward_cpus", "learner_cpus", "actor_start_timeout_s", "call_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"ray.{key} must be > 0, got {getattr(self, key)}")


def ensure_ray(cfg: RayConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Local session: no dashboard (it binds ports and costs start-up time on 2 cores).
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True)


def get_with_timeout(refs: Any, timeout_s: float, what: str) -> Any:
    """ray.get with a limit; the error says which remote call did not answer."""
    import ray

    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as err:
        raise RemoteTimeout(f"{what} did not answer within {timeout_s:.0f} s") from err

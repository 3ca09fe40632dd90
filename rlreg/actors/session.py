"""Ray session and remote waits: every `ray.get` in rlreg goes through `get_with_timeout`."""
from __future__ import annotations

import logging
import os
from typing import Any

from rlreg import console
from rlreg.errors import ConfigError, RlregError, RemoteTimeout

AUTH_MODE_ENV = "RAY_AUTH_MODE"
# Ray binds its services (GCS, raylet, workers, agents, metrics) to the node IP, which on Linux is the
# address other machines reach; with this off it uses loopback, as Ray does on macOS and Windows.
CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class ActorFailed(RlregError, RuntimeError):
    """A Ray actor died or stopped answering more often than ray.max_restarts allows."""


def actor_env() -> dict[str, str]:
    """Environment the compute actors (rollout engines, learner ranks) start with; OpenMP reads it
    once, at process start. By default an idle OpenMP thread spin-waits at each barrier: with a
    team as large as the machine, any other running process (Ray's own, another actor, other
    users) keeps a team member off its core and every op waits for a scheduler slice. PASSIVE lets
    idle threads sleep. Measured on 2 cores beside one busy process of equal priority: an RL step
    7.3 s → 4.0 s (25 M parameters), 4.7 s → 0.47 s (1 M); on a quiet machine the two are even
    (benchmarks/README.md, `rlreg bench scaling`)."""
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    # Where the actor's output goes (rlreg.console): the run's logs, or the console when verbose.
    for name in (console.LOG_DIR_ENV, console.VERBOSE_ENV):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def _loopback_only() -> None:
    """A local session rlreg starts serves this machine only: bind every Ray port to 127.0.0.1.
    Ray reads the switch at import (ray_constants) and in the processes it starts (environment)."""
    from ray._private import ray_constants

    os.environ[CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def ensure_ray(cfg: RayConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # Actors write to RUN_DIR/logs (rlreg.console); Ray streams their output only when verbose, and
    # its own start-up lines (the auth-token notice, "Started a local Ray instance") are dropped.
    shown = {"log_to_driver": console.verbose(), "logging_level": logging.INFO if console.verbose() else logging.ERROR}
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **shown)
        # Ray's own "Connecting to existing Ray cluster" line is dropped with its other start-up lines;
        # a user of `ray job submit` still sees which cluster the driver joined.
        console.say(f"joined the Ray cluster at {ray.get_runtime_context().gcs_address}")
    else:
        # Local session: no dashboard and no job server (HTTP ports; start-up time on 2 cores), every
        # port on loopback, and token auth on even if the environment says otherwise (unset, Ray's
        # default for a local session is token auth with a generated token).
        if os.environ.get(AUTH_MODE_ENV, "").lower() == "disabled":
            console.warn(f"ignoring {AUTH_MODE_ENV}=disabled for the local Ray session (any user of this "
                         "machine could run code through its ports); token authentication stays on")
            del os.environ[AUTH_MODE_ENV]
        _loopback_only()
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, **shown)


def get_with_timeout(refs: Any, timeout_s: float, what: str) -> Any:
    """ray.get with a limit; the error says which remote call did not answer."""
    import ray

    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as err:
        raise RemoteTimeout(f"{what} did not answer within {timeout_s:.0f} s") from err


def _cpu_report() -> str:
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    return f"the cluster has {free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs free" + (
        f" and {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs" if total.get("GPU") else "")


def require_resources(cpus: float, gpus: float, what: str) -> None:
    """Fail fast when a request can never fit: Ray would otherwise wait for it forever."""
    import ray

    total = ray.cluster_resources()
    if cpus > total.get("CPU", 0) + 1e-9 or gpus > total.get("GPU", 0) + 1e-9:
        raise ConfigError(f"{what} needs {cpus:g} CPUs and {gpus:g} GPUs but {_cpu_report()}; "
                          f"lower the ray.*_cpus settings, the worker counts, or use a larger cluster")


def wait_for_actors(refs: Any, timeout_s: float, what: str) -> Any:
    """Wait for actors to start; on timeout say what the cluster had free (the usual cause)."""
    try:
        return get_with_timeout(refs, timeout_s, what)
    except RemoteTimeout as err:
        raise RemoteTimeout(f"{err}; {_cpu_report()} (other runs or actors may hold the rest)") from err


def wait_for_start(refs: Any, timeout_s: float, what: str, release) -> Any:
    """wait_for_actors; if the start fails, `release()` first: actors that did start would hold
    their CPUs until the session ends, and every later start in the session would wait for them."""
    try:
        return wait_for_actors(refs, timeout_s, what)
    except BaseException:
        release()
        raise


def reserve_shared_placement(plan, cfg: RayConfig):
    """A placement group of plan.bundles for the learner and rollout groups to share (ray.colocate),
    reserved within ray.actor_start_timeout_s."""
    from ray.util.placement_group import placement_group

    from rlreg.actors.placement import SharedPlacement

    group = placement_group(plan.bundles, strategy=plan.strategy)
    try:
        get_with_timeout(group.ready(), cfg.actor_start_timeout_s, f"reserving {len(plan.bundles)} shared bundle(s) "
                                                                   f"{plan.bundles[0]} for engines and learner ranks")
    except BaseException:
        release_shared_placement(SharedPlacement(group, plan))
        raise
    return SharedPlacement(group, plan)


def release_shared_placement(shared) -> None:
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(shared.group)

"""RewardPool: M Ray actors that decode number tokens and score them with a reward function.

Rewards are computed in a chosen space (default: z-space, the paper's −(ŷ−y)² on z-scored
targets). Invalid sequences get `invalid_penalty`; a reward function that raises, returns NaN/inf
or hangs past its timeout gets `failure_penalty` for that batch — each case counted and reported."""
from __future__ import annotations

import concurrent.futures
import inspect
from typing import Callable

import numpy as np
import ray

from rlreg import console
from rlreg.actors import session
from rlreg.actors.config import RayConfig, RewardConfig
from rlreg.actors.session import ActorFailed, get_with_timeout, require_resources, wait_for_start
from rlreg.algos.rewards import REWARDS, check_rewards, load_reward
from rlreg.errors import RemoteTimeout
from rlreg.numbers.registry import build_number_tokenizer
from rlreg.numbers.scalers import decoded_to_original, scaler_from_state_dict


def accepted_columns(fn: Callable, spec: str, names: list[str]) -> list[str]:
    """The data columns a reward function receives as keywords (TRL's contract: columns in, floats
    out): all of them when it takes **kwargs, else the ones it names. The registry's own rewards
    ignore columns, so they get none (nothing is shipped to the reward actors for them)."""
    if spec in REWARDS:
        return []
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return list(names)
    return [n for n in names if n in params and params[n].kind in (params[n].KEYWORD_ONLY,
                                                                  params[n].POSITIONAL_OR_KEYWORD)]


class RewardWorker:
    def __init__(self, number_spec: dict, scaler_state: dict, cfg: RewardConfig):
        console.redirect_actor_output("reward")
        self.cfg = cfg
        self.number_tokenizer = build_number_tokenizer(number_spec)
        self.scaler = scaler_from_state_dict(scaler_state)
        self.fn = load_reward(cfg.fn, **cfg.options)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def ready(self) -> bool:
        return True

    def _to_space(self, values_scaled: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        original = self.scaler.inverse_transform(values_scaled)
        if self.cfg.space == "original":
            return original, targets
        if self.cfg.space == "z":
            return self.scaler.to_z(np.where(np.isfinite(original), original, 0.0)), self.scaler.to_z(targets)
        return values_scaled, self.scaler.transform(targets, clip=False)

    def score(self, number_ids: np.ndarray, targets: np.ndarray, columns: dict | None = None) -> dict:
        """Rewards of N decoded samples; `columns` ({name: [N] values}) reach the reward function as
        keywords, masked like pred and target to the valid samples."""
        values_scaled, valid = self.number_tokenizer.decode_many(number_ids)
        pred_orig, valid = decoded_to_original(self.scaler, values_scaled, valid)  # overflow: invalid
        pred, target = self._to_space(np.where(valid, values_scaled, 0.5), np.asarray(targets, dtype=np.float64))
        rewards = np.full(len(valid), self.cfg.invalid_penalty, dtype=np.float64)
        error = None
        failed = np.zeros(len(valid), dtype=bool)
        if valid.any():
            extra = {name: np.asarray(values)[valid] for name, values in (columns or {}).items()}
            call = self._pool.submit(self.fn, pred[valid], target[valid], **extra)
            try:
                out = call.result(timeout=self.cfg.timeout_s)
                bad = check_rewards(out, (int(valid.sum()),), self.cfg.fn)
                scored = np.asarray(out, dtype=np.float64)
                failed[np.flatnonzero(valid)[bad]] = True
                rewards[valid] = np.where(bad, self.cfg.failure_penalty, scored)
            except concurrent.futures.TimeoutError:
                error = f"reward {self.cfg.fn!r} did not return within reward.timeout_s={self.cfg.timeout_s}"
                failed[valid] = True
                rewards[valid] = self.cfg.failure_penalty
                # The hung call keeps its thread; give later calls a fresh one.
                self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            except Exception as err:  # the user's function failed: count it, report it, go on
                error = f"reward {self.cfg.fn!r} raised {type(err).__name__}: {err}"
                failed[valid] = True
                rewards[valid] = self.cfg.failure_penalty
        return {"rewards": rewards, "pred": pred_orig, "valid": valid, "failed": failed, "error": error}


def _brief(err: BaseException) -> str:
    """Error type and first line: Ray's actor errors run to many lines of context."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


class RewardPool:
    """M reward actors; a batch is split across them, and a chunk whose actor died is retried once on
    a replacement. If that fails too (died or hung), ActorFailed: run_train adds the --resume hint."""

    def __init__(self, number_spec: dict, scaler_state: dict, cfg: RewardConfig, ray_cfg: RayConfig,
                 column_names: list[str] = ()):
        self.cfg, self.ray_cfg = cfg, ray_cfg
        self.columns = accepted_columns(load_reward(cfg.fn, **cfg.options), cfg.fn, list(column_names))
        require_resources(cfg.workers * ray_cfg.reward_cpus, 0, f"{cfg.workers} reward actor(s)")
        self._args = (number_spec, scaler_state, cfg)
        # actor_env: on a cluster the workers do not inherit this driver's environment (log folder).
        self._cls = ray.remote(RewardWorker).options(num_cpus=ray_cfg.reward_cpus, max_restarts=2,
                                                     runtime_env={"env_vars": session.actor_env()})
        self.workers = [self._cls.remote(*self._args) for _ in range(cfg.workers)]
        wait_for_start([w.ready.remote() for w in self.workers], ray_cfg.actor_start_timeout_s,
                       f"starting {cfg.workers} reward actor(s)", self.shutdown)
        self.retries = 0

    def score(self, number_ids: np.ndarray, targets: np.ndarray, columns: dict | None = None) -> dict:
        """Score N samples over the pool; `columns` ({name: [N] values}) are the rows' data columns,
        of which those the reward function takes are sent along."""
        bounds = np.linspace(0, len(targets), len(self.workers) + 1).astype(int)
        chunks = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        sent = {name: np.asarray(columns[name]) for name in self.columns if columns and name in columns}

        def submit(worker, a: int, b: int):
            return worker.score.remote(number_ids[a:b], targets[a:b], {k: v[a:b] for k, v in sent.items()})

        refs = {i: submit(self.workers[i % len(self.workers)], a, b) for i, (a, b) in enumerate(chunks)}
        limit = self.cfg.timeout_s + self.ray_cfg.call_timeout_s
        results = {}
        for i, ref in refs.items():
            try:
                results[i] = get_with_timeout(ref, limit, "reward actor")
            except ray.exceptions.RayActorError as err:
                # The actor died mid-batch: score this chunk on a replacement, once.
                self.retries += 1
                a, b = chunks[i]
                self.workers[i % len(self.workers)] = self._cls.remote(*self._args)
                retry = submit(self.workers[i % len(self.workers)], a, b)
                try:
                    results[i] = get_with_timeout(retry, limit, "reward actor (retry)")
                except (ray.exceptions.RayActorError, RemoteTimeout) as again:
                    raise ActorFailed(
                        f"reward pool: chunk {i} (rows {a}-{b - 1}) failed on reward actor "
                        f"{i % len(self.workers)} ({_brief(err)}) and again on its replacement "
                        f"({_brief(again)})") from again
        merged = {key: np.concatenate([results[i][key] for i in sorted(results)])
                  for key in ("rewards", "pred", "valid", "failed")}
        merged["errors"] = [results[i]["error"] for i in sorted(results) if results[i]["error"]]
        return merged

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)

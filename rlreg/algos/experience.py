"""One RL step's data, from scored rollouts to what the learner ranks train on. Pure NumPy: it is
built on the driver and crosses Ray as plain arrays, so nothing here imports torch or Ray.

make_experience does the step's algorithm work between the reward pool and the learner: the KL
term in the reward, the std filter, advantages (rlreg.algos.advantages), GenRe²'s expert targets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from rlreg.algos.advantages import get_advantage
from rlreg.algos.filtering import filtered_fraction, std_filter

_ROW_FIELDS = ("tokens", "features", "old_logp", "advantages", "expert")


@dataclass
class LearnerBatch:
    """N rows for the learner: prompts, and per row the arrays an objective reads (None: absent)."""

    prompts: list[list[int]]
    tokens: np.ndarray | None = None  # int [N, L] number-token indices (None only for a greedy decode)
    features: np.ndarray | None = None  # float [N, f], vector input
    old_logp: np.ndarray | None = None  # [N, L] the engine's logprobs of the tokens
    advantages: np.ndarray | None = None  # [N]
    expert: np.ndarray | None = None  # int [N, L] expert target ids
    # Set by shards() for one learner rank (see there); the defaults are one rank's whole batch.
    loss_scale: float = 1.0  # multiplies the mean loss over these rows
    micro_batch_size: int | None = 0  # rows per forward/backward pass; 0/None: all in one
    passes: int = 1  # forward/backward passes every rank makes in one step
    stand_in: "LearnerBatch | None" = None  # a shard without rows runs this one row instead, at weight 0

    @classmethod
    def of(cls, inputs: dict, tokens: np.ndarray | None = None, **rows) -> "LearnerBatch":
        """From a task's inputs ({"prompts", optional "features"}, Task.inputs), one row each."""
        return cls(prompts=list(inputs["prompts"]), tokens=tokens, features=inputs.get("features"), **rows)

    @classmethod
    def of_rollouts(cls, inputs: dict, samples: np.ndarray, **per_sample) -> "LearnerBatch":
        """The B·G rows of G samples [B, G, L] per input, input-major (the G samples of one prompt
        sit together, which the shared-prefix forward relies on); `per_sample` arrays are [B, G, ...]."""
        batch, group = samples.shape[:2]
        features = inputs.get("features")
        flat = {k: None if v is None else np.asarray(v).reshape(batch * group, *np.shape(v)[2:])
                for k, v in per_sample.items()}
        return cls(prompts=[p for p in inputs["prompts"] for _ in range(group)],
                   tokens=np.asarray(samples).reshape(batch * group, -1),
                   features=None if features is None else np.repeat(features, group, axis=0), **flat)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, rows: np.ndarray | Sequence[int]) -> "LearnerBatch":
        """The given rows (indices, or a bool mask over all rows), in that order."""
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(int)
        picked = {k: None if getattr(self, k) is None else np.asarray(getattr(self, k))[rows] for k in _ROW_FIELDS}
        return LearnerBatch(prompts=[self.prompts[i] for i in rows], **picked)

    def shard_sizes(self, world_size: int) -> list[int]:
        return np.diff(self._bounds(world_size)).tolist()

    def shards(self, world_size: int, micro_batch_size: int | None = 0) -> list["LearnerBatch"]:
        """world_size contiguous slices covering every row once (sizes differ by at most one), each
        set up so that the ranks' gradients, which DeepSpeed averages with equal weights, are the
        gradient of the mean loss over the whole batch:

        - loss_scale = the shard's rows / the batch's rows × world_size. A rank's loss is the mean
          over its own rows, so with uneven shards (5 rows on 2 ranks: 2 and 3) an equal average
          would weigh rows of the smaller shard more; this scale makes every row weigh 1/N, as on
          one rank. (A sum over rows / N on every rank is the same thing, but the objectives
          return means, and their stats are per-row means too.)
        - a shard without rows (fewer rows than ranks) gets `stand_in`, a copy of the batch's first
          row that its rank runs at loss_scale 0: it contributes a zero gradient yet still joins
          every collective (the gradient reduction; ZeRO-3's parameter gathers in each forward).
        - passes: the most micro-batches of micro_batch_size rows any shard splits into; every
          rank makes that many forward/backward passes (micro_batches pads with zero-weight
          stand-ins), because ZeRO-2/3 reduce gradients, and ZeRO-3 gathers parameters, in each."""
        bounds = self._bounds(world_size)
        sizes = np.diff(bounds)
        passes = max(1, max(micro_batch_count(int(n), micro_batch_size) for n in sizes))
        stand_in = self._rows(0, 1, loss_scale=0.0, micro_batch_size=0, passes=1) if len(self) else None
        return [self._rows(a, b, loss_scale=world_size * (b - a) / max(1, len(self)),
                           micro_batch_size=micro_batch_size, passes=passes, stand_in=None if b > a else stand_in)
                for a, b in zip(bounds[:-1], bounds[1:])]

    def micro_batches(self) -> list["MicroBatch"]:
        """This shard's forward/backward passes: consecutive slices of micro_batch_size rows, each
        with its share of loss_scale (so the passes' gradients add up to the one-pass gradient),
        then zero-weight stand-ins up to `passes`. A run of rows with one prompt may be cut across
        two passes: each pass then encodes that prompt once for its own rows, and the gradients
        still add up to the same total (only the prompt's forward is repeated)."""
        rows = len(self)
        size = self.micro_batch_size or max(1, rows)
        own = [MicroBatch(self._rows(a, min(a + size, rows)), self.loss_scale * (min(a + size, rows) - a) / rows,
                          min(a + size, rows) - a) for a in range(0, rows, size)]
        if len(own) > self.passes:
            raise ValueError(f"this shard needs {len(own)} passes of {size} rows but its ranks make {self.passes}: "
                             "shard the batch with the same micro_batch_size the ranks use")
        filler = self if rows == 0 else self._rows(0, 1)
        if filler.stand_in is not None:
            filler = filler.stand_in
        if not len(filler):
            raise ValueError("an empty batch has no row to stand in for a learner pass")
        return own + [MicroBatch(filler, 0.0, 0)] * (self.passes - len(own))

    def runnable(self) -> "LearnerBatch":
        """The rows a rank computes on: its own, or for a shard without rows its stand-in (whose
        results the rank then drops)."""
        return self if len(self) or self.stand_in is None else self.stand_in

    def _rows(self, a: int, b: int, **fields) -> "LearnerBatch":
        return dataclasses.replace(self, prompts=self.prompts[a:b],
                                   **{k: None if getattr(self, k) is None else getattr(self, k)[a:b]
                                      for k in _ROW_FIELDS}, **fields)

    def _bounds(self, world_size: int) -> np.ndarray:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        return np.linspace(0, len(self), world_size + 1).astype(int)


@dataclass
class MicroBatch:
    """One forward/backward pass of a rank: the rows to run, the factor on their mean loss, and how
    many of them are real (0 for a stand-in; the weight of its stats in merge_stats)."""

    batch: LearnerBatch
    loss_scale: float
    rows: int


def micro_batch_count(rows: int, micro_batch_size: int | None) -> int:
    """Passes that `rows` rows take at micro_batch_size rows each (0/None: one pass)."""
    if rows == 0:
        return 0
    return -(-rows // micro_batch_size) if micro_batch_size else 1


def merge_stats(results: list[dict], weights: list[int]) -> dict:
    """Row-weighted mean of each numeric stat over parts (learner ranks, or one rank's passes);
    `*_max` / `*_min` stats take the max / min. Parts of weight 0 (a stand-in's stats describe a
    copied row) are left out."""
    merged: dict[str, float] = {}
    totals: dict[str, float] = {}
    for stats, w in zip(results, weights):
        if w <= 0:
            continue
        for key, value in stats.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            value = float(value)
            if key.endswith("_max"):
                merged[key] = max(merged.get(key, value), value)
            elif key.endswith("_min"):
                merged[key] = min(merged.get(key, value), value)
            else:
                merged[key] = merged.get(key, 0.0) + value * w
                totals[key] = totals.get(key, 0.0) + w
    return {key: value / totals[key] if key in totals else value for key, value in merged.items()}


@dataclass
class Experience:
    """One step's rollouts of B inputs × G samples, scored and with advantages."""

    inputs: dict  # Task.inputs of the B rows: prompts, optional features
    samples: np.ndarray  # int [B, G, L] number-token indices
    old_logp: np.ndarray  # [B, G, L] the engine's logprobs of the samples
    rewards: np.ndarray  # float64 [B, G], after any KL term
    advantages: np.ndarray  # float64 [B, G]
    keep: np.ndarray  # bool [B]: groups the std filter kept
    valid: np.ndarray  # bool [B, G]: samples that decoded (the others carry the invalid penalty)
    expert: np.ndarray | None = None  # int [B, G, L] expert targets (when expert_ce_coef > 0)

    @property
    def group_size(self) -> int:
        return self.samples.shape[1]

    def learner_batch(self) -> LearnerBatch:
        """The kept groups' samples, flattened to rows (invalid samples included: their penalty
        reward is the signal that teaches the policy to stop writing them)."""
        batch = LearnerBatch.of_rollouts(self.inputs, self.samples, old_logp=self.old_logp,
                                         advantages=self.advantages, expert=self.expert)
        return batch.select(np.repeat(self.keep, self.group_size))


def kl_for_reward(logp: np.ndarray, ref_logp: np.ndarray, kind: str, coef: float,
                  mask: np.ndarray | None = None) -> np.ndarray:
    """KL in the reward: coef · per-sequence sum over counted tokens of Schulman's estimate of
    KL(policy ‖ ref) from sampled tokens, float64 [N]; subtract it from the rewards.
    k1 = logp - ref (unbiased, can be negative); k3 = exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    logp, ref = np.asarray(logp, dtype=np.float64), np.asarray(ref_logp, dtype=np.float64)
    if logp.shape != ref.shape:
        raise ValueError(f"kl_for_reward: logp {logp.shape} and ref_logp {ref.shape} differ")
    mask = np.ones(logp.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    # Zero masked entries first: they may hold -inf, and -inf - -inf is NaN.
    logp, ref = np.where(mask, logp, 0.0), np.where(mask, ref, 0.0)
    if kind == "k1":
        per_token = logp - ref
    elif kind == "k3":
        log_ratio = ref - logp
        per_token = np.exp(log_ratio) - log_ratio - 1.0
    else:
        raise ValueError(f"KL kind must be 'k1' or 'k3', got {kind!r}")
    return coef * np.where(mask, per_token, 0.0).sum(axis=1)


def expert_targets(seqs, y: Sequence[float] | np.ndarray, next_id_fn: Callable[[float, list[int]], int]) -> np.ndarray:
    """[N, L] int64 expert target ids: entry (i, t) = next_id_fn(y_i, seqs[i, :t]), the
    error-minimising next token after the rollout's OWN prefix (e.g. a NumberTokenizer's
    `expert_next_ids`). Conditioning on the sampled prefix, not the target's, is what makes
    this dense supervision along every rollout, including ones that already went wrong."""
    ids = np.asarray(seqs)
    ys = np.asarray(y, dtype=np.float64)
    if ids.ndim != 2 or ys.shape != (ids.shape[0],):
        raise ValueError(f"expert_targets: expected seqs [N, L] and y [N], got {ids.shape} and {ys.shape}")
    out = np.empty(ids.shape, dtype=np.int64)
    for i, row in enumerate(ids.tolist()):
        for t in range(len(row)):
            out[i, t] = next_id_fn(float(ys[i]), row[:t])
    return out


def group_stats(prefix: str, values: np.ndarray) -> dict:
    return {f"{prefix}_mean": float(np.mean(values)), f"{prefix}_std": float(np.std(values)),
            f"{prefix}_min": float(np.min(values)), f"{prefix}_max": float(np.max(values))}


def make_experience(inputs: dict, samples: np.ndarray, logprobs: np.ndarray, rewards: np.ndarray,
                    valid: np.ndarray, targets: np.ndarray, algo, *,
                    expert_next_ids: Callable[[float, list[int]], int] | None = None,
                    baseline: np.ndarray | None = None,
                    ref_logp: np.ndarray | None = None) -> tuple[Experience, dict]:
    """Scored rollouts → (Experience, stats).

    samples int [B, G, L] number-token indices and their engine logprobs [B, G, L]; rewards [B, G]
    from the reward pool (invalid samples already at the penalty) and its valid mask [B, G];
    targets [B] in the tokenizer's scaled space (for the expert targets); `algo` an AlgoConfig
    (or RLConfig). baseline [B]: the greedy decode's reward, for estimators that need it (ReMax).
    ref_logp [B, G, L]: the frozen reference's logprobs of the samples, needed for kl_in=reward."""
    samples = np.asarray(samples)
    if samples.ndim != 3:
        raise ValueError(f"make_experience: samples must be [B, G, L], got shape {samples.shape}")
    batch, group, length = samples.shape
    rewards = np.asarray(rewards, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    for name, value in (("rewards", rewards), ("valid", valid)):
        if value.shape != (batch, group):
            raise ValueError(f"make_experience: {name} must be [{batch}, {group}], got {value.shape}")
    stats: dict = {}
    if algo.kl_coef > 0 and algo.kl_in == "reward":
        if ref_logp is None:
            raise ValueError("make_experience: kl_in=reward with kl_coef > 0 needs ref_logp")
        kl = kl_for_reward(np.reshape(logprobs, (batch * group, length)), np.reshape(ref_logp, (batch * group, length)),
                           algo.kl_kind, algo.kl_coef)
        rewards = rewards - kl.reshape(batch, group)
        stats["kl_reward"] = float(kl.mean())
        # The greedy decode's KL is not estimated: ReMax's baseline stays its raw reward.
    keep = np.ones(batch, dtype=bool) if algo.std_filter_tol is None else std_filter(rewards, algo.std_filter_tol)
    stats["filtered_fraction"] = filtered_fraction(keep)
    advantages = get_advantage(algo.advantage)(rewards, baseline, algo.adv_eps)
    expert = None
    if algo.expert_ce_coef > 0:
        if expert_next_ids is None:
            raise ValueError("make_experience: expert_ce_coef > 0 needs expert_next_ids")
        expert = expert_targets(samples.reshape(batch * group, length), np.repeat(targets, group),
                                expert_next_ids).reshape(batch, group, length)
    stats.update(group_stats("reward", rewards))
    stats.update(group_stats("advantage", advantages))
    stats["invalid_rate"] = float(1 - valid.mean())
    experience = Experience(inputs=inputs, samples=samples, old_logp=np.asarray(logprobs).reshape(samples.shape),
                            rewards=rewards, advantages=advantages, keep=keep, valid=valid, expert=expert)
    return experience, stats

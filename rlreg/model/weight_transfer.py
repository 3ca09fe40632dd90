"""Weights sent over a process group (sync.route: collective), both ends: learner rank 0 packs
parameters into buckets and broadcasts them; every engine worker receives the same buckets and
unpacks them. A bucket is one flat byte buffer holding whole tensors, so a send is one collective
op however many tensors it carries, and at most one bucket is in flight on either side.

The group is its own: a TCPStore hosted by learner rank 0 and a process group built on it directly
(not torch.distributed.init_process_group), so the learners' DeepSpeed group and vLLM's own are
untouched. Every wait on it is time-limited."""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from rlreg import device

ROOT = 0  # learner rank 0: the group's rank of the sender; engine workers are 1..N


class SyncFailed(RuntimeError):
    """A collective weight transfer did not complete (a peer died, or a wait timed out)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str  # HF name, as the engine's load_weights expects it
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "float32"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def plan_buckets(specs: Sequence[TensorSpec], bucket_bytes: int) -> list[list[int]]:
    """Consecutive groups of tensor indices, each at most bucket_bytes (a tensor larger than that
    travels alone in a bucket of its own). Both ends compute the same plan from the same specs."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    buckets: list[list[int]] = []
    size = 0
    for i, spec in enumerate(specs):
        if buckets and size + spec.nbytes <= bucket_bytes:
            buckets[-1].append(i)
            size += spec.nbytes
        else:
            buckets.append([i])
            size = spec.nbytes
    return buckets


def bucket_nbytes(specs: Sequence[TensorSpec], bucket: Sequence[int]) -> int:
    return sum(specs[i].nbytes for i in bucket)


def pack_bucket(tensors: Sequence[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Copy the tensors' bytes, in order, into the flat uint8 buffer `out`."""
    at = 0
    for t in tensors:
        flat = t.detach().contiguous().view(-1).view(torch.uint8)
        out[at : at + flat.numel()].copy_(flat)
        at += flat.numel()
    return out


def unpack_bucket(specs: Sequence[TensorSpec], bucket: Sequence[int], buffer: torch.Tensor
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) views into a received buffer, in the bucket's order (no copy)."""
    at = 0
    for i in bucket:
        spec = specs[i]
        yield spec.name, buffer[at : at + spec.nbytes].view(spec.torch_dtype).view(spec.shape)
        at += spec.nbytes


def _failed(what: str, err: Exception) -> SyncFailed:
    return SyncFailed(f"weight sync, {what}: {type(err).__name__}: {str(err).splitlines()[0][:300]}")


class WeightGroup:
    """One end's membership of the transfer group: rank 0 hosts the store, the others join it."""

    def __init__(self, host: str, port: int, rank: int, size: int, timeout_s: float, backend: str):
        from torch.distributed import TCPStore

        self.rank, self.size, self.timeout_s = rank, size, timeout_s
        timeout = datetime.timedelta(seconds=timeout_s)
        # wait_for_workers=False: the host returns at once; the group's constructor below waits for
        # every member (within the timeout), and members join in any order.
        self.store = TCPStore(host, port, size, is_master=rank == ROOT, timeout=timeout, wait_for_workers=False)
        self.group, self.device = device.weight_sync_group(self.store, rank, size, timeout, backend)

    def broadcast(self, buffer: torch.Tensor, what: str) -> None:
        """Broadcast `buffer` from ROOT (in place on the receivers), waiting at most timeout_s."""
        self.finish(self.start(buffer, what), what)

    def start(self, buffer: torch.Tensor, what: str):
        """Begin a broadcast of `buffer` (the backend moves it in its own thread); finish() waits."""
        try:
            return self.group.broadcast(buffer, ROOT, datetime.timedelta(seconds=self.timeout_s))
        except Exception as err:
            raise _failed(what, err) from err

    def finish(self, work, what: str) -> None:
        try:
            work.wait(datetime.timedelta(seconds=self.timeout_s))
        except Exception as err:  # gloo/nccl raise RuntimeError subclasses with the peer's state
            raise _failed(what, err) from err

    def send(self, buffers: Iterator[torch.Tensor]) -> int:
        """Broadcast each buffer from ROOT, packing the next while the last one is on the wire (two
        in flight at most); returns the bytes sent."""
        sent, previous = 0, None
        for k, buffer in enumerate(buffers):
            work = self.start(buffer, f"sending bucket {k + 1}")
            if previous is not None:
                self.finish(*previous)
            previous, sent = (work, f"sending bucket {k + 1}"), sent + buffer.numel()
            del buffer
        if previous is not None:
            self.finish(*previous)
        return sent

    def receive(self, specs: Sequence[TensorSpec], buckets: Sequence[Sequence[int]], exit_after: int = 0
                ) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) of every bucket ROOT sends, the next bucket arriving while the caller loads
        the last one (two in flight at most). `exit_after` > 0 (tests only) ends the process after
        that many buckets, as an engine killed mid-sync."""
        def begin(k: int):
            buffer = torch.empty(bucket_nbytes(specs, buckets[k]), dtype=torch.uint8, device=self.device)
            return buffer, self.start(buffer, f"receiving bucket {k + 1} of {len(buckets)}")

        ahead = begin(0) if buckets else None
        for k, bucket in enumerate(buckets):
            buffer, work = ahead
            self.finish(work, f"receiving bucket {k + 1} of {len(buckets)}")
            if exit_after and k + 1 == exit_after:
                import os

                os._exit(1)
            ahead = begin(k + 1) if k + 1 < len(buckets) else None
            yield from unpack_bucket(specs, bucket, buffer)

    def close(self) -> None:
        self.group = None  # the process group's destructor closes its connections
        self.store = None

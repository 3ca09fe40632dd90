"""What rlreg adds to each vLLM worker (`LLM(worker_extension_cls=...)`), reached through
`LLM.collective_rpc`: vLLM's public route to its workers, the same call whether the engine runs
inside the calling process or in its own engine-core process (and on every tensor-parallel
worker). Method names carry an `rlreg_` prefix: vLLM refuses an extension whose names clash with
its worker's."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# What rlreg.model.engine passes to vLLM: the import path of the class below.
WORKER_EXTENSION = "rlreg.model.engine_worker.WeightLoader"


def pack_arrays(named_arrays: Mapping[str, np.ndarray]) -> list[tuple[str, str, tuple, memoryview]]:
    """(name, dtype, shape, buffer) per array. vLLM's msgpack channel to an engine in its own process
    decodes an array it has no type hint for into its raw parts, so rlreg sends the parts itself; in
    process the buffers are views (no copy)."""
    packed = []
    for name, array in named_arrays.items():
        array = np.ascontiguousarray(array)
        packed.append((name, array.dtype.str, tuple(array.shape), memoryview(array).cast("B")))
    return packed


def unpack_array(dtype: str, shape: Sequence[int], buffer) -> np.ndarray:
    return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(tuple(shape))


class WeightLoader:
    """Mixed into vLLM's worker class, so `self` is the worker."""

    @staticmethod
    def _rlreg_quiet_reload() -> None:
        import logging

        # The rotary embedding has buffers but no checkpoint weights; vLLM warns about it on every
        # reload ("RotaryEmbedding: Failed to load weights"), which would flood each RL step's log.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)

    def rlreg_load_weights(self, packed: Sequence) -> int:
        """Replace the weights in place from pack_arrays' entries; returns how many were given. Each
        becomes a tensor only when the loader reaches it (one extra copy at a time).

        `model.load_weights` fails on CPU (linear weights are repacked for oneDNN after loading);
        the worker's `reload_weights(is_checkpoint_format=True)` redoes that processing."""
        import torch

        self._rlreg_quiet_reload()
        tensors = ((name, torch.tensor(unpack_array(dtype, shape, buffer))) for name, dtype, shape, buffer in packed)
        self.reload_weights(weights_iterator=tensors, is_checkpoint_format=True)
        return len(packed)

    # -- weights over a process group (sync.route: collective, rlreg.model.weight_transfer) ---------
    def rlreg_open_weight_group(self, host: str, port: int, rank: int, size: int, timeout_s: float,
                                backend: str) -> int:
        """Join the transfer group hosted by learner rank 0, as member `rank`."""
        from rlreg.model.weight_transfer import WeightGroup

        self.rlreg_close_weight_group()
        self._rlreg_weight_group = WeightGroup(host, port, rank, size, timeout_s, backend)
        return rank

    def rlreg_close_weight_group(self) -> None:
        group = getattr(self, "_rlreg_weight_group", None)
        if group is not None:
            group.close()
        self._rlreg_weight_group = None

    def rlreg_receive_weights(self, specs: Sequence, buckets: Sequence[Sequence[int]], exit_after: int = 0) -> int:
        """Receive the buckets learner rank 0 broadcasts and load them as they arrive: vLLM's loader
        pulls tensors from the iterator, so at most two buckets are held here. Returns how many
        tensors were loaded. `exit_after`: see WeightGroup.receive (tests only)."""
        from rlreg.model.weight_transfer import TensorSpec

        group = getattr(self, "_rlreg_weight_group", None)
        if group is None:
            raise RuntimeError("rlreg_receive_weights before rlreg_open_weight_group")
        # Over vLLM's msgpack channel the specs arrive as lists.
        specs = [s if isinstance(s, TensorSpec) else TensorSpec(s[0], s[1], tuple(s[2])) for s in specs]
        self._rlreg_quiet_reload()
        self.reload_weights(weights_iterator=group.receive(specs, buckets, exit_after), is_checkpoint_format=True)
        return sum(len(b) for b in buckets)

    def rlreg_ping(self) -> bool:
        return True

    def rlreg_rng_state(self) -> bytes:
        """The sampler's generators in this worker's process (CPU, and CUDA where there is one): vLLM
        seeds them once, at engine start (a per-request seed kills the CPU engine), so a checkpoint
        saves them. Read here, not in the caller: with the engine core in its own process, the
        caller's generator is not the one that samples."""
        import torch

        states = [torch.get_rng_state()] + ([torch.cuda.get_rng_state()] if torch.cuda.is_available() else [])
        return b"".join(len(b).to_bytes(8, "little") + b for b in (s.numpy().tobytes() for s in states))

    def rlreg_set_rng_state(self, blob: bytes) -> None:
        import torch

        states, at = [], 0
        while at < len(blob):
            size = int.from_bytes(blob[at : at + 8], "little")
            if size <= 0 or at + 8 + size > len(blob):
                raise ValueError("the engine RNG state given is not one rlreg_rng_state wrote")
            states.append(torch.frombuffer(bytearray(blob[at + 8 : at + 8 + size]), dtype=torch.uint8))
            at += 8 + size
        torch.set_rng_state(states[0])
        if len(states) > 1:
            torch.cuda.set_rng_state(states[1])

"""The collective weight transfer's pieces without Ray or vLLM: the bucket plan both ends compute,
packing and unpacking, and the transfer group itself (gloo, two real processes): a bucket arrives
intact, and a wait on a peer that never sends ends with SyncFailed within the group's timeout."""
import multiprocessing as mp
import socket
import time

import pytest
import torch

from rlreg.actors.config import SyncConfig
from rlreg.errors import ConfigError
from rlreg.model.weight_transfer import (SyncFailed, TensorSpec, WeightGroup, bucket_nbytes, pack_bucket,
                                         plan_buckets, unpack_bucket)

SPECS = [TensorSpec("a", "float32", (4, 4)), TensorSpec("b", "float32", (8,)), TensorSpec("big", "float32", (64,)),
         TensorSpec("c", "bfloat16", (3, 2))]


def test_buckets_hold_whole_tensors_in_order_within_the_limit():
    assert [s.nbytes for s in SPECS] == [64, 32, 256, 12]
    buckets = plan_buckets(SPECS, 95)
    assert [i for b in buckets for i in b] == list(range(len(SPECS)))  # every tensor once, in order
    assert buckets == [[0], [1], [2], [3]]  # 64 B + 32 B > 95; the 256 B tensor travels alone
    assert plan_buckets(SPECS, 96) == [[0, 1], [2], [3]]
    assert bucket_nbytes(SPECS, [0, 1]) == 96
    assert plan_buckets(SPECS, 10**6) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError):
        plan_buckets(SPECS, 0)


def test_pack_then_unpack_gives_back_every_tensor_bit_for_bit():
    tensors = [torch.randn(4, 4), torch.randn(8), torch.randn(64), torch.randn(3, 2).to(torch.bfloat16)]
    bucket = [0, 1, 2, 3]
    buffer = pack_bucket(tensors, torch.empty(bucket_nbytes(SPECS, bucket), dtype=torch.uint8))
    out = list(unpack_bucket(SPECS, bucket, buffer))
    assert [name for name, _ in out] == ["a", "b", "big", "c"]
    for (_, got), want in zip(out, tensors):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)


def test_route_auto_is_object_store_on_cpu_collective_on_gpu(monkeypatch):
    from rlreg import device

    assert SyncConfig().resolved_route(takes_features=False) == "object_store"
    assert SyncConfig(route="collective").resolved_route(takes_features=False) == "collective"
    assert device.weight_sync_backend(shares_a_gpu=False) == "gloo"
    monkeypatch.setenv(device.DEVICE_ENV, "gpu")
    device.has_cuda.cache_clear()
    try:
        assert SyncConfig().resolved_route(takes_features=False) == "collective"
        # NCCL refuses two members on one device: an engine on learner rank 0's GPU gets gloo.
        assert device.weight_sync_backend(shares_a_gpu=False) == "nccl"
        assert device.weight_sync_backend(shares_a_gpu=True) == "gloo"
        assert SyncConfig().resolved_route(takes_features=True) == "object_store"  # the encoder lives by the engine
    finally:
        monkeypatch.delenv(device.DEVICE_ENV)
        device.has_cuda.cache_clear()
    with pytest.raises(ConfigError, match="sync.route: collective does not carry the feature encoder"):
        SyncConfig(route="collective").resolved_route(takes_features=True)


def test_bad_sync_settings_are_refused_by_key():
    from rlreg.config import load_config

    with pytest.raises(ConfigError, match="sync.route must be one of auto, collective, object_store"):
        load_config(None, ["sync.route=nccl"])
    with pytest.raises(ConfigError, match="sync.bucket_mb must be > 0"):
        load_config(None, ["sync.bucket_mb=0"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _receiver(port: int, nbytes: int, queue) -> None:
    queue.put("imported")  # a spawned process takes seconds to import torch: form the group after
    group = WeightGroup("127.0.0.1", port, 1, 2, timeout_s=4, backend="gloo")
    buffer = torch.zeros(nbytes, dtype=torch.uint8)
    group.broadcast(buffer, "bucket 1")
    queue.put(buffer.view(torch.float32).tolist())
    try:
        group.broadcast(buffer, "bucket 2")  # the sender never sends it
        queue.put("no error")
    except SyncFailed as err:
        queue.put(str(err))


def test_a_bucket_crosses_processes_and_a_missing_one_times_out():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    values = torch.arange(6, dtype=torch.float32)
    peer = ctx.Process(target=_receiver, args=(port, values.numel() * 4, queue))
    peer.start()
    try:
        assert queue.get(timeout=120) == "imported"
        sender = WeightGroup("127.0.0.1", port, 0, 2, timeout_s=4, backend="gloo")
        sender.broadcast(pack_bucket([values], torch.empty(24, dtype=torch.uint8)), "bucket 1")
        assert queue.get(timeout=60) == values.tolist()
        started = time.monotonic()
        # The sender stays up and sends nothing more: the receiver's wait ends at its 4 s limit.
        message = queue.get(timeout=60)
        assert "weight sync, bucket 2" in message, message
        assert 3 < time.monotonic() - started < 30
    finally:
        peer.join(timeout=60)
        if peer.is_alive():
            peer.kill()

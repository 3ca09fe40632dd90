"""Starting the actors can fail part-way; what that must not leave behind.

- Rendezvous ports (rlreg.actors.deepspeed_setup.free_port) come from below the kernel's ephemeral
  range, where outgoing connections cannot take them between the choice and the store's bind.
- An RLRunner whose learner fails to start stops the engines and reward workers it had started, so
  the session's CPUs are free for the next start in the same process (RLRegressor, Tune, tests)."""
from __future__ import annotations

import socket
import time

import pytest

from rlreg.actors import deepspeed_setup
from rlreg.actors.deepspeed_setup import RENDEZVOUS_LOW, ephemeral_ports, free_port


def test_rendezvous_ports_come_from_below_the_ephemeral_range():
    low, _ = ephemeral_ports()
    for _ in range(20):
        port = free_port()
        assert RENDEZVOUS_LOW <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free, as promised


def test_without_room_below_the_range_the_port_is_the_systems(monkeypatch):
    monkeypatch.setattr(deepspeed_setup, "ephemeral_ports", lambda: (RENDEZVOUS_LOW + 10, 60999))
    assert free_port() >= RENDEZVOUS_LOW + 10  # bind(0): an ephemeral port
    monkeypatch.undo()
    monkeypatch.setattr(deepspeed_setup, "_bindable", lambda host, port: False)  # nothing below is free
    assert free_port() >= ephemeral_ports()[0]


@pytest.mark.engine
def test_a_runner_whose_learner_cannot_start_frees_what_it_started(tiny_task, tiny_cfg, ray_session, tmp_path):
    import dataclasses

    import ray

    from rlreg.errors import ConfigError
    from rlreg.model.config import LoraConfig
    from rlreg.train.rl import RLRunner

    def free_cpus() -> float:
        return ray.available_resources().get("CPU", 0.0)

    total, deadline = ray.cluster_resources().get("CPU", 0.0), time.monotonic() + 60
    while free_cpus() < total and time.monotonic() < deadline:  # an earlier test's actors still ending
        time.sleep(0.5)
    before = free_cpus()
    # LoRA under ZeRO-3 is refused by the learner group, after the engines and rewards started.
    cfg = dataclasses.replace(tiny_cfg, learner=dataclasses.replace(tiny_cfg.learner, zero_stage=3),
                              model=dataclasses.replace(tiny_cfg.model, lora=LoraConfig(r=4)))
    # The error is kept, as a caller reporting it keeps it: its traceback holds the half-built runner,
    # so garbage collection does not stop the actors either.
    with pytest.raises(ConfigError, match="model.lora") as failed:
        RLRunner(cfg, tiny_task, tiny_task.model_dir, tmp_path / "rl")
    deadline = time.monotonic() + 60  # Ray's resource view refreshes asynchronously
    while free_cpus() < before and time.monotonic() < deadline:
        time.sleep(0.5)
    # At least as many as before: if an earlier test's actors outlived the wait above, they may free
    # theirs meanwhile (seen once without that wait: 1.2 free before, 1.3 after); a runner left holding
    # its engines keeps the count below (1.3 of 2 without the clean-up).
    assert free_cpus() >= before - 1e-6, failed.value

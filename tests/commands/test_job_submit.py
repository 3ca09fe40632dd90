"""`rlreg train` submitted with `ray job submit` to a head this test starts with `ray start`.

The head is this test's own: its own temp dir (RAY_TMPDIR + --temp-dir, so it never registers in
/tmp/ray/ray_current_cluster where other sessions on the machine would find it), its own ports,
auth disabled on loopback (heads started by `ray start` use token auth), and its own process group.
Every port is a free one: the defaults are fixed (the dashboard agent's 52365, the client server's
10001, ...) and another Ray session on the machine may hold them — a head whose dashboard agent
cannot bind answers every submission with "No available agent to submit job".
It is stopped by killing that process group — never with `ray stop`, which stops every Ray
process on the machine, including other sessions and this pytest process's own."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.engine


VENV_BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 420
TINY = [
    "data.source=sklearn:diabetes", "data.max_rows=200", "model.layers=1", "model.hidden=64", "model.heads=2",
    "model.prompt_vocab=300", "numbers.base=2", "numbers.length=6", "engine.kv_cache_memory_bytes=67108864",
    "sft.steps=10", "sft.eval_every=5", "rl.steps=2", "rl.eval_every=1", "rl.batch_size=4", "rl.group_size=4",
    "rl.eval_samples=4", "reward.workers=1", "eval.samples=4", "eval.n_boot=50", "eval.plots=false",
]


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (all held open together while picking, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _ray_env(temp_root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # The venv first on PATH: the job's `python` / `rlreg` are the ones on the PATH of `ray start`.
    env.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(temp_root), PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}",
               RAY_USAGE_STATS_ENABLED="0")
    return env


def _kill_head(proc: subprocess.Popen, temp_dir: Path) -> None:
    """SIGTERM, then SIGKILL, to every process of our head: its session, its descendants, and
    anything whose command line names our temp dir or whose environment carries our RAY_TMPDIR
    (Ray workers and job drivers inherit it from `ray start`)."""
    import psutil

    try:
        sid = os.getsid(proc.pid)
    except ProcessLookupError:
        sid = None
    mine: dict[int, psutil.Process] = {}
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            mine[child.pid] = child
    except psutil.NoSuchProcess:
        pass
    for candidate in psutil.process_iter(["cmdline"]):
        try:
            if (sid is not None and os.getsid(candidate.pid) == sid) \
                    or str(temp_dir) in " ".join(candidate.info["cmdline"] or []) \
                    or candidate.environ().get("RAY_TMPDIR") == str(temp_dir.parent):
                mine[candidate.pid] = candidate
        except (psutil.Error, ProcessLookupError):
            continue
    if proc.poll() is None:
        mine[proc.pid] = psutil.Process(proc.pid)  # `ray start --block` itself
    mine.pop(os.getpid(), None)  # never this pytest process
    for p in mine.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(mine.values()), timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_head():
    # Short path: Ray's unix socket names live under it and have a length limit.
    temp_root = Path(tempfile.mkdtemp(prefix="rlreg-jh-"))
    temp_dir = temp_root / "ray"
    names = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port", "node-manager-port",
             "object-manager-port")
    ports = dict(zip(names, _free_ports(len(names))))
    env = _ray_env(temp_root)
    log = (temp_root / "ray_start.log").open("w")
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--dashboard-host=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=true", f"--temp-dir={temp_dir}", *[f"--{k}={v}" for k, v in ports.items()], "--block"],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the job server answers once the dashboard is up
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start --head did not come up: {(temp_root / 'ray_start.log').read_text()}")
                time.sleep(1)
        yield {"address": address, "gcs_port": ports["port"], "env": env, "temp_root": temp_root}
    finally:
        _kill_head(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_root, ignore_errors=True)


def _ray_job(head: dict, *args: str, timeout: float = 60) -> str:
    # --address right after the subcommand: anything after `--` belongs to the job's entrypoint.
    command, *rest = args
    out = subprocess.run([str(VENV_BIN / "ray"), "job", command, "--address", head["address"], *rest], env=head["env"],
                         capture_output=True, text=True, timeout=timeout)
    return out.stdout + out.stderr


def _wait_for_job(head: dict, job_id: str) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = _ray_job(head, "status", job_id)
        if "succeeded" in status:
            return "SUCCEEDED"
        if "failed" in status or "was stopped" in status:
            return "FAILED"
        time.sleep(3)
    _ray_job(head, "stop", job_id)
    return "TIMEOUT"


def _submit(head: dict, job_id: str, command: str) -> tuple[str, str]:
    """Submit `command` (one shell line) and wait for it; returns (status, logs)."""
    deadline = time.monotonic() + 120
    while True:  # a fresh head's job agent comes up a few seconds after the dashboard
        # `ray job submit` shell-quotes each word after `--`: hand the whole command line to sh -c.
        submitted = _ray_job(head, "submit", "--no-wait", "--submission-id", job_id, "--", "sh", "-c", command)
        if "No available agent" not in submitted or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert job_id in submitted, submitted
    status = _wait_for_job(head, job_id)
    return status, _ray_job(head, "logs", job_id)


def _write_config(path: Path, mapping: dict) -> Path:
    import yaml

    from rlreg.configlib import apply_overrides

    path.write_text(yaml.safe_dump(apply_overrides(mapping, TINY)))
    return path


def test_rlreg_train_job_submit_joins_the_cluster(ray_head, tmp_path):
    run_dir = tmp_path / "job_run"
    config = _write_config(tmp_path / "tiny.yaml", {})
    status, logs = _submit(ray_head, f"rlreg-train-{os.getpid()}",
                           f"python -c 'import sys; print(\"job python:\", sys.executable)' && "
                           f"python -m rlreg train {config} run_dir={run_dir}")
    assert status == "SUCCEEDED", f"job {status}; logs:\n{logs[-4000:]}"
    # The driver joined the head through RAY_ADDRESS (set by the job supervisor) instead of
    # starting a session of its own, and ran the venv's python (the PATH of `ray start`).
    assert re.search(rf"joined the Ray cluster at [\d.]+:{ray_head['gcs_port']}\n", logs), logs[:3000]
    assert "Started a local Ray instance" not in logs
    assert re.search(rf"job python: {re.escape(str(VENV_BIN))}/python", logs), logs[:2000]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stage"] == "rl"
    assert math.isfinite(metrics["test"]["rmse"]) and metrics["test"]["rmse"] > 0
    assert "test metrics" in logs


def test_rlreg_tune_job_submit_runs_its_trials_on_the_cluster(ray_head, tmp_path):
    """The same `rlreg tune` command as locally, as a job: trials are placed on the head's resources."""
    import csv

    run_dir = tmp_path / "sweep"
    config = _write_config(tmp_path / "tune.yaml", {
        "tune": {"grace_period": 2, "max_concurrent": 2,
                 "space": {"reward.fn": {"grid": ["neg_mse", "neg_abs"]}}},
        "ray": {"rollout_cpus": 0.4, "learner_cpus": 0.4, "torch_threads": 1}})
    status, logs = _submit(ray_head, f"rlreg-tune-{os.getpid()}",
                           f"python -m rlreg tune {config} rl.eval_every=2 rl.steps=4 run_dir={run_dir}")
    assert status == "SUCCEEDED", f"job {status}; logs:\n{logs[-4000:]}"
    assert re.search(rf"joined the Ray cluster at [\d.]+:{ray_head['gcs_port']}\n", logs) and "tune results (2 trials" in logs
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert sorted(r["reward.fn"] for r in rows) == ["neg_abs", "neg_mse"]
    assert all(r["status"] in ("finished", "stopped early") for r in rows), rows
    assert (run_dir / "best.yaml").is_file()

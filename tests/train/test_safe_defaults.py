"""Safe defaults: the local Ray session rlreg starts listens on loopback only and keeps token auth;
weights are written and read as safetensors; nothing unpickles with torch.load(weights_only=False)
(DeepSpeed's checkpoint loads go through an allowlisting loader); checkpoints and model directories
are replaced atomically, so a crash mid-save never leaves something that looks complete."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlreg.errors import ConfigError
from conftest import REPO

RLREG = REPO / "rlreg"
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")

SESSION_PROBE = textwrap.dedent("""
    import json, grpc, psutil, ray
    from ray._raylet import AuthenticationMode, get_authentication_mode
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    from rlreg.actors.config import RayConfig
    from rlreg.actors.session import ensure_ray

    ensure_ray(RayConfig(num_cpus=1))

    @ray.remote(num_cpus=0.1)
    class Ping:
        def ping(self):
            return 1

    ray.get(Ping.remote().ping.remote(), timeout=120)
    me = psutil.Process()
    listening = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            listening += [[proc.name(), c.laddr.ip, c.laddr.port] for c in proc.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    gcs = ray.get_runtime_context().gcs_address
    try:  # a client without the session's token
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(grpc.insecure_channel(gcs)).GetAllNodeInfo(
            gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10)
        anonymous = "answered"
    except grpc.RpcError as err:
        anonymous = err.code().name
    print("RESULT " + json.dumps({"listening": listening, "gcs": gcs, "anonymous": anonymous,
                                  "token_auth": get_authentication_mode() == AuthenticationMode.TOKEN}))
    ray.shutdown()
""")


def test_safe_defaults_local_ray_session_is_loopback_only_with_token_auth():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["RAY_AUTH_MODE"] = "disabled"  # rlreg keeps token auth on anyway, and says so
    out = subprocess.run([sys.executable, "-c", SESSION_PROBE], capture_output=True, text=True, env=env, timeout=180)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert "ignoring RAY_AUTH_MODE=disabled" in out.stderr
    assert result["token_auth"] and result["anonymous"] == "UNAUTHENTICATED"
    names = {name for name, _, _ in result["listening"]}
    assert {"gcs_server", "raylet"} <= names, result["listening"]  # the probe saw the session's processes
    exposed = [entry for entry in result["listening"] if entry[1] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert 8265 not in {port for _, _, port in result["listening"]}  # no dashboard / job server
    assert result["gcs"].startswith("127.0.0.1:")


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
            yield node, name, owner, {k.arg: k.value for k in node.keywords}


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


# Marks the one call that may read pickle weights, behind the model.allow_pickle setting.
OPT_IN = "# opt-in: model.allow_pickle"


def test_safe_defaults_no_unsafe_deserialisation_in_rlreg():
    """torch.load only with weights_only=True; no pickle / allow_pickle; HF models loaded and saved
    as safetensors only."""
    offenders = []
    for path in sorted(RLREG.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node, name, owner, kw in _calls(path):
            where = f"{path.relative_to(RLREG.parent)}:{node.lineno}: {ast.unparse(node)[:80]}"
            if any(OPT_IN in lines[k] for k in range(node.lineno - 1, node.end_lineno)):
                continue  # the user's explicit choice (refused by default: tests/model/test_pretrained.py)
            if name == "load" and owner == "torch" and not _is_true(kw.get("weights_only")):
                offenders.append(where)
            elif name in ("load", "loads") and owner in ("pickle", "cloudpickle", "dill"):
                offenders.append(where)
            elif "allow_pickle" in kw and not (isinstance(kw["allow_pickle"], ast.Constant)
                                               and kw["allow_pickle"].value is False):
                offenders.append(where)
            elif name == "from_pretrained" and "Tokenizer" not in owner and not _is_true(kw.get("use_safetensors")):
                offenders.append(where)
            elif name == "save_pretrained" and "tokenizer" not in owner.lower() \
                    and not _is_true(kw.get("safe_serialization")):
                offenders.append(where)
    assert not offenders, "\n".join(offenders)


class _Evil:
    """Unpickling this runs a shell command: what a tampered checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_safe_defaults_checkpoint_loader_admits_deepspeed_types_and_refuses_others(tmp_path):
    import torch
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from rlreg.actors.deepspeed_setup import safe_torch_load

    good = tmp_path / "optim_states.pt"
    torch.save({"w": torch.arange(3.0), "stage": ZeroStageEnum.gradients, "scaler": LossScaler(1.0),
                "frag": fragment_address(numel=3, start=0), "client": {"step": 2}}, good)
    state = safe_torch_load(str(good))
    assert state["stage"] == ZeroStageEnum.gradients and state["frag"].numel == 3 and state["client"] == {"step": 2}

    marker, bad = tmp_path / "pwned", tmp_path / "model_states.pt"
    torch.save({"w": torch.zeros(1), "x": _Evil(marker)}, bad)
    with pytest.raises(ConfigError, match=r"model_states\.pt: refusing to load.*system"):
        safe_torch_load(str(bad))
    assert not marker.exists()


@pytest.mark.engine
def test_safe_defaults_deepspeed_checkpoint_load_refuses_tampered_file(tiny_task, tiny_cfg, ray_session, tmp_path):
    """The learner's DeepSpeed engine loads through safe_torch_load: a tampered checkpoint is refused
    before anything in it runs."""
    import torch

    from rlreg.actors.learner import LearnerGroup
    from rlreg.actors.config import RayConfig

    group = LearnerGroup(tiny_task.model_dir, tiny_cfg.learner, 1e-3, 10, RayConfig(torch_threads=1))
    try:
        group.save_checkpoint(str(tmp_path), "step000001", {"step": 1, "cursor": {"epoch": 0, "offset": 4}})
        assert group.load_checkpoint(str(tmp_path), "step000001")["step"] == 1  # the genuine one loads
        marker, target = tmp_path / "pwned", tmp_path / "step000001" / "mp_rank_00_model_states.pt"
        state = torch.load(target, weights_only=True)
        torch.save({**state, "x": _Evil(marker)}, target)
        with pytest.raises(ConfigError, match=r"mp_rank_00_model_states\.pt: refusing to load"):
            group.load_checkpoint(str(tmp_path), "step000001")
        assert not marker.exists()
    finally:
        group.shutdown()


# --- a crash mid-save never leaves a checkpoint that looks complete --------------------------------

class _Learner:
    """Writes and reads checkpoint directories the way DeepSpeed does (files under ckpt_dir/tag)."""

    def __init__(self, fail_after_files: int | None = None):
        self.fail_after_files, self.loaded = fail_after_files, []

    def save_checkpoint(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        folder = Path(ckpt_dir, tag)
        folder.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(("mp_rank_00_model_states.pt", "optim_states.pt")):
            if self.fail_after_files is not None and i >= self.fail_after_files:
                raise OSError("disk full (injected)")
            (folder / name).write_text(json.dumps(client_state))

    def load_checkpoint(self, ckpt_dir: str, tag: str) -> dict:
        self.loaded.append(tag)
        return json.loads(Path(ckpt_dir, tag, "mp_rank_00_model_states.pt").read_text())


class _Rollout:
    workers = [None]

    def rng_states(self) -> list[bytes]:
        return [b"rng"]

    def set_rng_states(self, states: list[bytes]) -> None:
        pass

    def load_weights(self, ref) -> list[int]:
        return [1]


def _runner(run_dir: Path, learner: _Learner):
    from rlreg.train.rl import RLRunner
    from rlreg.data.batches import BatchCursor

    from rlreg.actors.weight_sync import ObjectStoreSync
    from rlreg.config import load_config

    runner = object.__new__(RLRunner)  # checkpoint logic only: no actors
    runner.run_dir, runner.learner, runner.rollout = run_dir, learner, _Rollout()
    runner.cfg, runner.weights = load_config(None, []), ObjectStoreSync()
    runner.cursor, runner.step_index = BatchCursor(10, 2, 1), 0
    runner.learner.publish_weights = lambda: None
    return runner


@pytest.mark.parametrize("crash", ["in the learner's files", "before latest.json is renamed"])
def test_safe_defaults_crash_mid_checkpoint_keeps_the_last_complete_one(tmp_path, monkeypatch, crash):
    runner = _runner(tmp_path, _Learner())
    runner.step_index = 2
    runner.save_checkpoint()
    runner.step_index = 3
    if crash == "in the learner's files":
        runner.learner.fail_after_files = 1
    else:
        import os

        real_replace = os.replace  # rlreg.io renames with os.replace

        def replace(src, dst):
            if Path(dst).name == "latest.json":
                raise OSError("killed (injected)")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="injected"):
        runner.save_checkpoint()
    monkeypatch.undo()

    latest = json.loads((tmp_path / "rl_checkpoints" / "latest.json").read_text())
    assert latest["tag"] == "step000002" and latest["step"] == 2
    assert (tmp_path / "rl_checkpoints" / "step000002" / "rollout_rng.json").is_file()
    resumed = _runner(tmp_path, _Learner())
    assert resumed.restore() and resumed.learner.loaded == ["step000002"] and resumed.step_index == 2


def test_safe_defaults_checkpoint_prunes_older_ones_only_after_the_new_one_is_named(tmp_path):
    runner = _runner(tmp_path, _Learner())
    for step in (1, 2, 3):
        runner.step_index = step
        runner.save_checkpoint()
    assert sorted(p.name for p in (tmp_path / "rl_checkpoints").glob("step*")) == ["step000003"]


def test_safe_defaults_model_dir_swap_survives_a_crash_between_renames(tmp_path, monkeypatch):
    from rlreg.io import replace_dir

    final = tmp_path / "checkpoint"
    for version in ("v1", "v2"):
        tmp = tmp_path / "checkpoint.tmp"
        tmp.mkdir()
        (tmp / "model.safetensors").write_text(version)
        if version == "v2":  # crash after `final` moved aside, before `tmp` took its place
            real_rename, calls = Path.rename, []

            def rename(self, target):
                calls.append(target)
                if len(calls) == 2:
                    raise OSError("killed (injected)")
                return real_rename(self, target)

            monkeypatch.setattr(Path, "rename", rename)
            with pytest.raises(OSError, match="injected"):
                replace_dir(tmp, final)
            monkeypatch.undo()
            assert not final.exists() and (tmp_path / "checkpoint.old" / "model.safetensors").read_text() == "v1"
            replace_dir(tmp, final)  # the next save puts v1 back, then swaps v2 in
        else:
            replace_dir(tmp, final)
    assert (final / "model.safetensors").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]

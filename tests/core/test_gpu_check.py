"""scripts/gpu_check.sh --dry-run: every case the GPU check runs is a config rlreg accepts, with a
placement plan (as on a GPU machine: RLREG_DEVICE=gpu) for one GPU and for four."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CASES = [f"zero{z}-{route}-{where}" for z in (1, 3) for route in ("object_store", "collective")
         for where in ("separate", "colocated")]


@pytest.mark.parametrize("gpus", [1, 4])
def test_gpu_check_dry_run_accepts_every_case(gpus):
    venv = Path(sys.executable).parent.parent
    env = {**os.environ, "RLREG_VENV": str(venv), "RLREG_GPU_CHECK_GPUS": str(gpus)}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.strip().splitlines()[-1] == f"gpu_check: PASS ({gpus} GPU(s), dry run)"
    for case in CASES:
        assert f"== {case} (dry run)" in out
    assert out.count("device: gpu (nccl)") == len(CASES)
    assert out.count("placement (colocated") == 4 and out.count("placement (separate") == 4
    assert out.count("weight sync: collective") == 4 and out.count("weight sync: object_store") == 4
    ranks = 2 if gpus >= 2 else 1
    assert f"learner: {ranks} rank(s), ZeRO-3" in out


def test_gpu_check_refuses_a_machine_without_gpus():
    venv = Path(sys.executable).parent.parent
    env = {**os.environ, "RLREG_VENV": str(venv), "PATH": "/usr/bin:/bin"}  # no nvidia-smi
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no GPU visible" in done.stdout

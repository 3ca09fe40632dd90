"""Multi-node placement on one machine: a two-node `ray.cluster_utils.Cluster` (head with custom
resource node_a, worker with node_b), and a tiny RL run whose rollout worker is pinned to node_a
(`ray.rollout_resources`) and whose learner rank is pinned to node_b (`ray.learner_resources`).

The scenario runs in a subprocess: the suite's session-scoped `ray_session` fixture may already
hold a local Ray session in the pytest process, and a process can be connected to one cluster
only. RAY_TMPDIR points the subprocess at a temp dir of its own, because Cluster() registers its
head in <tmp>/ray/ray_current_cluster, where every other `ray.init()` on the machine would find
(and join) it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine

SCENARIO = r'''
import json, os, sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from rlreg.actors.session import ensure_ray, get_with_timeout
from rlreg.config import load_config
from rlreg.rundir import RunDir
from rlreg.train.rl import RLRunner, train_rl
from rlreg.train.task import prepare_task

run_dir = sys.argv[1]
cluster = Cluster(initialize_head=True,
                  head_node_args={"num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False})
worker = cluster.add_node(num_cpus=1, resources={"node_b": 1})
cluster.wait_for_nodes()
try:
    cfg = load_config(None, [
        "data.source=sklearn:diabetes", "data.max_rows=200", "model.layers=1", "model.hidden=64", "model.heads=2",
        "model.prompt_vocab=300", "numbers.base=2", "numbers.length=6", "engine.kv_cache_memory_bytes=67108864",
        "rl.steps=2", "rl.eval_every=1", "rl.batch_size=4", "rl.group_size=4", "rl.eval_samples=4",
        "reward.workers=1", f"ray.address={cluster.address}", "ray.torch_threads=1",
        "ray.rollout_resources={node_a: 0.5}", "ray.learner_resources={node_b: 0.5}", f"run_dir={run_dir}"])
    out = RunDir.create(cfg, "train").path
    task = prepare_task(cfg, out)
    ensure_ray(cfg.ray)
    runner = RLRunner(cfg, task, task.model_dir, out)
    try:
        placed = {
            "rollout": get_with_timeout(runner.rollout.workers[0].node_id.remote(), 60, "rollout node id"),
            "learner": get_with_timeout(runner.learner.ranks[0].node_id.remote(), 60, "learner node id"),
        }
        final_dir, last_val = train_rl(runner)
    finally:
        runner.shutdown()
    result = {**placed, "node_a": cluster.head_node.node_id, "node_b": worker.node_id,
              "nodes_alive": sum(n["Alive"] for n in ray.nodes()), "steps": runner.step_index,
              "final_model": (Path(final_dir) / "model.safetensors").is_file(), "val_rmse": last_val.get("val_rmse")}
    print("RESULT " + json.dumps(result), flush=True)
finally:
    ray.shutdown()
    cluster.shutdown()
'''


def test_rollout_and_learner_on_two_nodes(tmp_path):
    temp_root = Path(tempfile.mkdtemp(prefix="rlreg-2n-"))  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(temp_root), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    try:
        proc = subprocess.run([sys.executable, "-c", SCENARIO, str(tmp_path / "run")], env=env,
                              capture_output=True, text=True, timeout=480)
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"scenario failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["nodes_alive"] == 2
    assert result["rollout"] == result["node_a"], result
    assert result["learner"] == result["node_b"], result
    assert result["rollout"] != result["learner"]
    assert result["steps"] == 2 and result["final_model"]
    assert result["val_rmse"] is not None and result["val_rmse"] > 0

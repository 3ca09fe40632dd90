"""Shared fixtures: one tiny task, one in-process vLLM engine and one Ray session per test run
(two cores: starting these once keeps the suite lean)."""
from __future__ import annotations

import os
from pathlib import Path

# Before anything imports vllm: run the engine inside this process (it starts in ~4 s, not ~30 s).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402

from rlreg.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The workplace data lives beside the clone (read in place, never copied).
SHARED_DATA = REPO.parent / "shared" / "data"

TINY = [
    "data.source=sklearn:diabetes", "data.max_rows=200", "model.layers=1", "model.hidden=64", "model.heads=2",
    "model.prompt_vocab=300", "numbers.base=2", "numbers.length=6", "engine.kv_cache_memory_bytes=67108864",
]


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny_run")
    return load_config(None, [*TINY, f"run_dir={run_dir}"])


@pytest.fixture(scope="session")
def tiny_task(tiny_cfg):
    from pathlib import Path

    from rlreg.train.task import prepare_task

    return prepare_task(tiny_cfg, Path(tiny_cfg.run_dir))


@pytest.fixture(scope="session")
def engine(tiny_task, tiny_cfg):
    from rlreg.model.engine import NumberEngine

    return NumberEngine(tiny_task.model_dir, tiny_cfg.engine, tiny_cfg.model.max_positions)


@pytest.fixture
def fresh_choice(monkeypatch):
    """rlreg.device decides anew (has_cuda is cached per process); yields monkeypatch for setenv."""
    from rlreg import device

    monkeypatch.delenv(device.DEVICE_ENV, raising=False)
    device.has_cuda.cache_clear()
    yield monkeypatch
    device.has_cuda.cache_clear()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray session for every test that runs actors (ray.init costs 4-8 s here)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# The `engine` marker lets `pytest -m "not engine"` run the fast suite; it only works if every slow
# test carries it, so a test that reaches these fixtures without the marker fails collection.
SLOW_FIXTURES = {"engine", "ray_session"}


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("engine") is None]
    if unmarked:
        raise pytest.UsageError("mark these tests @pytest.mark.engine (they use the engine or ray_session "
                                "fixture): " + ", ".join(unmarked))


def tiny_runner(tiny_task, tiny_cfg, overrides: list[str], run_dir: Path):
    """An RLRunner on the session's tiny task: `overrides` for the RL settings, the task's own data,
    numbers, model and engine settings."""
    from rlreg.train.rl import RLRunner

    cfg = load_config(None, overrides)
    cfg.data, cfg.numbers, cfg.model, cfg.engine = tiny_cfg.data, tiny_cfg.numbers, tiny_cfg.model, tiny_cfg.engine
    return RLRunner(cfg, tiny_task, tiny_task.model_dir, run_dir)


def run_tune(config: Path, args: list[str], timeout_s: float):
    """`rlreg tune config args` in a subprocess with its own local Ray session (apart from the
    suite's: no RAY_ADDRESS, its own temp dir, removed after)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    temp_root = Path(tempfile.mkdtemp(prefix="rlreg-tune-"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(temp_root), RAY_USAGE_STATS_ENABLED="0")
    try:
        return subprocess.run([sys.executable, "-m", "rlreg", "tune", str(config), *args], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)

"""GPU defaults decided on this CPU machine: RLREG_DEVICE=gpu makes rlreg.device plan for CUDA
without CUDA, so the choices a GPU run gets (KV-cache sizing, CUDA graphs, TF32, bf16) are checked
here without starting vLLM or DeepSpeed."""
import json

import pytest
import torch

from rlreg import device
from rlreg.actors.config import LearnerConfig
from rlreg.actors.deepspeed_setup import deepspeed_config
from rlreg.config import load_config
from rlreg.errors import ConfigError
from rlreg.model.config import EngineConfig
from rlreg.model.engine import engine_kwargs


# Each case decides the device anew (tests/conftest.py: fresh_choice).
pytestmark = pytest.mark.usefixtures("fresh_choice")


def _on(monkeypatch, where: str) -> None:
    monkeypatch.setenv("RLREG_DEVICE", where)
    device.has_cuda.cache_clear()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two tiny built model directories (real rlreg.model.build output): float32 and bfloat16."""
    from conftest import TINY
    from rlreg.train.task import prepare_task

    out = {}
    for dtype in ("float32", "bfloat16"):
        run_dir = tmp_path_factory.mktemp(f"model_{dtype}")
        cfg = load_config(None, [*TINY, f"model.dtype={dtype}", f"run_dir={run_dir}"])
        out[dtype] = prepare_task(cfg, run_dir).model_dir
    return out


# -- KV cache and CUDA graphs -------------------------------------------------------------------
def test_kv_cache_comes_from_gpu_memory_utilization_on_gpu_and_bytes_on_cpu(fresh_choice, model_dirs):
    cfg = EngineConfig(gpu_memory_utilization=0.7, kv_cache_memory_bytes=64 * 1024**2)
    _on(fresh_choice, "cpu")
    cpu = engine_kwargs(model_dirs["float32"], cfg, 128)
    assert cpu["kv_cache_memory_bytes"] == 64 * 1024**2 and "gpu_memory_utilization" not in cpu
    _on(fresh_choice, "gpu")
    gpu = engine_kwargs(model_dirs["float32"], cfg, 128)
    assert gpu["gpu_memory_utilization"] == 0.7 and "kv_cache_memory_bytes" not in gpu


def test_enforce_eager_auto_is_eager_on_cpu_graphs_on_gpu(fresh_choice, model_dirs):
    auto = EngineConfig()
    assert auto.enforce_eager == "auto"
    _on(fresh_choice, "cpu")
    assert engine_kwargs(model_dirs["float32"], auto, 128)["enforce_eager"] is True
    _on(fresh_choice, "gpu")
    assert engine_kwargs(model_dirs["float32"], auto, 128)["enforce_eager"] is False
    assert device.engine_enforce_eager(True) is True  # an explicit choice wins on either device
    _on(fresh_choice, "cpu")
    assert device.engine_enforce_eager(False) is False


@pytest.mark.parametrize("override, message", [
    ("engine.gpu_memory_utilization=0", "engine.gpu_memory_utilization must be in"),
    ("engine.gpu_memory_utilization=1.5", "engine.gpu_memory_utilization must be in"),
    ("engine.enforce_eager=sometimes", "engine.enforce_eager must be auto, true or false"),
])
def test_engine_settings_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_engine_settings_defaults_and_explicit_values_load():
    cfg = load_config(None, ["engine.gpu_memory_utilization=1", "engine.enforce_eager=false"])
    assert (cfg.engine.gpu_memory_utilization, cfg.engine.enforce_eager) == (1.0, False)
    assert load_config(None, []).engine.gpu_memory_utilization == 0.9


def test_sleep_mode_on_cpu_is_refused_before_the_engine_starts(fresh_choice, model_dirs):
    _on(fresh_choice, "cpu")
    with pytest.raises(ConfigError, match="engine.sleep_mode needs GPUs"):
        engine_kwargs(model_dirs["float32"], EngineConfig(sleep_mode=True), 128)
    _on(fresh_choice, "gpu")
    assert engine_kwargs(model_dirs["float32"], EngineConfig(sleep_mode=True), 128)["enable_sleep_mode"] is True


# -- TF32 ---------------------------------------------------------------------------------------
def test_tf32_is_left_alone_on_cpu_and_enabled_for_cuda(fresh_choice):
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        _on(fresh_choice, "cpu")
        assert device.enable_tf32() is False
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        # A CPU build of torch takes the flags too (they only change CUDA kernels), so this runs here.
        _on(fresh_choice, "gpu")
        assert device.enable_tf32() is True
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# -- bf16 end to end ----------------------------------------------------------------------------
def test_the_builder_records_the_model_dtype(model_dirs):
    for dtype, model_dir in model_dirs.items():
        assert json.loads((model_dir / "config.json").read_text())["dtype"] == dtype
        assert device.model_dtype(model_dir) == dtype


def test_bf16_model_gives_a_bf16_engine_and_a_bf16_deepspeed_learner(model_dirs):
    bf16_dir, fp32_dir = model_dirs["bfloat16"], model_dirs["float32"]
    assert engine_kwargs(bf16_dir, EngineConfig(), 128)["dtype"] == "bfloat16"
    assert engine_kwargs(fp32_dir, EngineConfig(), 128)["dtype"] == "float32"
    assert engine_kwargs(bf16_dir, EngineConfig(dtype="float32"), 128)["dtype"] == "float32"  # explicit wins
    # learner.bf16 unset follows the start model, as LearnerRank.connect resolves it
    learner = load_config(None, []).learner
    assert learner.bf16 is None
    for model_dir, expected in ((bf16_dir, True), (fp32_dir, False)):
        resolved = LearnerConfig(bf16=device.learner_bf16(learner.bf16, model_dir))
        assert deepspeed_config(resolved, world_size=1)["bf16"] == {"enabled": expected}
    assert device.learner_bf16(False, bf16_dir) is False and device.learner_bf16(True, fp32_dir) is True


@pytest.mark.engine
def test_bf16_supervised_run_trains_in_bf16_and_evaluates_in_a_bf16_engine(ray_session, tmp_path):
    """model.dtype=bfloat16 end to end on real DeepSpeed and vLLM: the learner's module is bf16
    when it saves (transformers records the module's dtype in config.json), so the engine that
    evaluates the checkpoint runs bf16 too, and it samples valid numbers."""
    from conftest import TINY
    from rlreg.rundir import RunDir
    from rlreg.train.pipeline import run_supervised

    cfg = load_config(None, [*TINY, "model.dtype=bfloat16", "sft.steps=6", "sft.eval_every=3", "eval.samples=2",
                             f"run_dir={tmp_path / 'run'}"])
    assert cfg.learner.bf16 is None  # follows the model
    payload = run_supervised(cfg, "sft")
    assert device.model_dtype(payload["checkpoint"]) == "bfloat16"
    logged = [json.loads(line) for line in RunDir(cfg.run_dir).log("sft").read_text().splitlines()]
    losses = [e["loss"] for e in logged if e["split"] == "train"]
    assert len(losses) == 6 and all(map(lambda x: x == x and abs(x) < 1e6, losses))
    assert losses[-1] < losses[0]
    assert 0 < payload["val"]["rmse"] < float("inf")


@pytest.mark.engine
def test_an_engine_started_without_sleep_mode_refuses_to_sleep_and_keeps_sampling(engine, tiny_task):
    with pytest.raises(RuntimeError, match="without engine.sleep_mode"):
        engine.sleep()
    out = engine.sample(tiny_task.prompts["val"][:2], tiny_task.allowed_hf, 1, 0.0)
    assert out.token_ids.shape == (2, 1, len(tiny_task.allowed_hf))

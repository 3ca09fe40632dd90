"""model.pretrained on the real stack: tiny Qwen2-style and Llama-style checkpoints made in the test
(sharded safetensors, a real BPE tokenizer with and without BOS, a chat template) go through
`rlreg train` (supervised stage → GRPO → evaluation) and `rlreg predict` on sqlcard text, with the
number tokens added (atomic) or spelled with the tokenizer's own digits (text); after a weight sync
the engine's logprobs equal the learner's."""
import json

import numpy as np
import pytest
from parity import engine_learner_gap
from pretrained_models import make_checkpoint

from conftest import REPO, SHARED_DATA, run_tune
from rlreg.config import load_config

pytestmark = [pytest.mark.engine,
              pytest.mark.skipif(not (SHARED_DATA / "sqlcard").is_dir(), reason="needs ../shared/data/sqlcard")]

EXAMPLE = REPO / "examples" / "pretrained_sqlcard.yaml"
SMALL = ["data.max_rows=80", "model.max_positions=384", "numbers.tokenizer=normalized", "numbers.base=10",
         "numbers.length=3", "engine.kv_cache_memory_bytes=67108864", "learner.micro_batch_size=8",
         "ray.torch_threads=1"]
TRAIN = ["sft.steps=6", "sft.eval_every=3", "sft.lr=0.001", "rl.steps=2", "rl.eval_every=0", "rl.batch_size=4",
         "rl.group_size=4", "rl.lr=0.0001", "eval.samples=4", "eval.n_boot=20", "reward.workers=1"]
CASES = {  # checkpoint kind, overrides: both surfaces, with and without BOS / chat template, fp32 and bf16
    "qwen2-atomic-chat": ("qwen2", ["numbers.surface=atomic", "data.chat_template=true"]),
    "llama-text-bf16": ("llama", ["numbers.surface=text", "model.dtype=bfloat16"]),
    # Adapters on the frozen base (the added number tokens keep their rows from the digits' text), bf16.
    "qwen2-atomic-lora-bf16": ("qwen2", ["numbers.surface=atomic", "model.lora.r=4", "sft.lr=0.01",
                                         "model.dtype=bfloat16"]),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {kind: make_checkpoint(root / kind, kind) for kind in ("qwen2", "llama")}


@pytest.mark.parametrize("case", list(CASES))
def test_train_then_predict_from_a_pretrained_checkpoint(case, checkpoints, ray_session, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from rlreg.cli import main
    from rlreg.rundir import ModelFiles

    kind, overrides = CASES[case]
    run = tmp_path / "run"
    argv = ["train", str(EXAMPLE), f"model.pretrained={checkpoints[kind]}", f"run_dir={run}", *SMALL, *TRAIN,
            *overrides]
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(metrics["test"]["rmse"])
    final = run / "checkpoint"
    meta = json.loads((final / ModelFiles.META).read_text())
    assert meta["surface"] == overrides[0].split("=")[1] and meta["pretrained"] == str(checkpoints[kind])
    # The learner wrote the weights: the start model's shard index did not follow them.
    files = ModelFiles.weight_files(final)
    index = final / ModelFiles.WEIGHTS_INDEX
    assert files and (not index.exists() or set(json.loads(index.read_text())["weight_map"].values())
                      == {p.name for p in files})
    AutoModelForCausalLM.from_pretrained(final, use_safetensors=True)  # transformers reads what rlreg wrote
    assert (final / "lora_adapter").is_dir() == ("model.lora.r=4" in overrides)
    if case == "qwen2-atomic-chat":  # rlreg eval reads the pretrained run as any other
        assert main(["eval", str(run), "--samples", "2", "--split", "val"]) == 0, capsys.readouterr().err[-3000:]
        assert np.isfinite(json.loads((run / "eval_val.json").read_text())["model"]["rmse"])
    queries = (SHARED_DATA / "sqlcard" / "synthetic.sql").read_text().splitlines()[:3]
    source = tmp_path / "queries.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": q}) + "\n" for i, q in enumerate(queries)))
    out = tmp_path / "predictions.jsonl"
    # alpha 0.5: the 6 validation rows calibrate a 50% interval (a 90% one needs at least 9)
    assert main(["predict", str(final), "--input", str(source), "--output", str(out), "--samples", "4", "--alpha", "0.5",
                 "engine.kv_cache_memory_bytes=67108864"]) == 0, capsys.readouterr().err[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert all(np.isfinite(r["prediction"]) and r["lower"] <= r["upper"] for r in rows)


# Before the module-scoped runner below: while it lives it holds the session's CPUs, and the
# estimator's learner could not reserve its bundle.
def test_rlregressor_fits_and_predicts_on_a_pretrained_checkpoint(checkpoints, ray_session, tmp_path):
    """RLRegressor's vector input goes through the soft-token encoder at the checkpoint's width."""
    from rlreg import RLRegressor
    from rlreg.rundir import ModelFiles

    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (120, 3))
    y = 5.0 * X[:, 0] + X[:, 1]
    overrides = (f"model.pretrained={checkpoints['qwen2']}", "numbers.tokenizer=normalized", "numbers.base=10",
                 "numbers.length=3", "engine.kv_cache_memory_bytes=67108864", "ray.torch_threads=1",
                 "rl.batch_size=4", "rl.group_size=4", "rl.eval_every=0", "reward.workers=1", "eval.n_boot=20")
    model = RLRegressor(overrides=overrides, sft_steps=6, rl_steps=1, samples=4, random_state=0, run_dir=str(tmp_path))
    try:
        assert model.fit(X, y) is model
        meta = json.loads((model.checkpoint_ / ModelFiles.META).read_text())
        assert meta["pretrained"] == str(checkpoints["qwen2"]) and meta["surface"] == "atomic"
        pred = model.predict(X[:8])
        assert pred.shape == (8,) and np.isfinite(pred).all()
        lower, upper = model.predict_interval(X[:8], alpha=0.5)
        assert np.all(lower <= upper)
    finally:
        model.close()


def test_tune_sweeps_a_pretrained_checkpoint(checkpoints, tmp_path):
    """`rlreg tune` in a subprocess (its own local Ray session): two trials from one shared
    supervised stage on the adopted checkpoint; the best config names the checkpoint."""
    import csv

    run_dir = tmp_path / "sweep"
    args = [f"model.pretrained={checkpoints['qwen2']}", *SMALL, *TRAIN, "eval.plots=false", "ray.num_cpus=2",
            "ray.rollout_cpus=0.4", "ray.learner_cpus=0.4", "tune.search=grid", "tune.scheduler=none",
            "tune.max_concurrent=1", "tune.space={rl.lr: {grid: [0.0001, 0.001]}}", f"run_dir={run_dir}"]
    proc = run_tune(EXAMPLE, args, timeout_s=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert sorted(float(r["rl.lr"]) for r in rows) == [0.0001, 0.001]
    assert all(r["status"] == "finished" for r in rows), rows
    best = load_config(run_dir / "best.yaml")
    assert best.model.pretrained == str(checkpoints["qwen2"]) and best.rl.lr in (0.0001, 0.001)

@pytest.fixture(scope="module", params=["atomic-collective", "text-object_store"])
def runner(request, checkpoints, ray_session, tmp_path_factory):
    from rlreg.train.rl import RLRunner
    from rlreg.train.task import prepare_task

    surface, route = request.param.split("-")
    kind = "qwen2" if surface == "atomic" else "llama"
    run = tmp_path_factory.mktemp(f"pretrained_{surface}")
    cfg = load_config(EXAMPLE, [f"model.pretrained={checkpoints[kind]}", f"run_dir={run}", *SMALL,
                                f"numbers.surface={surface}", "model.dtype=float32", "learner.world_size=1",
                                "rl.batch_size=4", "rl.group_size=4", "rl.lr=0.003", "rl.eval_every=0",
                                "reward.workers=1", f"sync.route={route}", "sync.bucket_mb=0.05"])
    task = prepare_task(cfg, run)
    r = RLRunner(cfg, task, task.model_dir, run / "rl")
    yield r
    r.shutdown()


def test_engine_logprobs_equal_the_learners_after_a_sync(runner):
    assert engine_learner_gap(runner.task, runner.rollout, runner.learner, samples=2) < 1e-3
    stats = runner.step()  # the learner moves; the step ends with a weight sync
    assert np.isfinite(stats["loss"]) and stats["invalid_rate"] == 0.0
    assert engine_learner_gap(runner.task, runner.rollout, runner.learner, samples=2) < 1e-3


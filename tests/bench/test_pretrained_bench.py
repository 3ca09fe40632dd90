"""`rlreg bench pretrained --quick`: a CPU dry run of the pretrained-checkpoint benchmark
(benchmarks/pretrained.py) at tiny size — a Qwen2-style checkpoint with a 1,024-token BPE made on
the fly, adopted through model.pretrained, one RL step of rlreg against TRL's GRPOTrainer (fp32) and
the answer-only vs full-vocabulary learner step — writing the JSON the committed results use."""
import json
import math
from pathlib import Path

import pytest

from rlreg.commands.bench import BENCHMARKS, missing_requirements


def test_pretrained_is_a_registered_benchmark():
    assert "pretrained" in BENCHMARKS


def test_tokenizer_and_checkpoint_have_qwen2_conventions(tmp_path):
    from benchmarks.pretrained import SPARE_ROWS, TINY, make_checkpoint

    out = make_checkpoint(tmp_path / "ckpt", TINY)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["vocab_size"] == TINY["vocab"] + SPARE_ROWS
    assert config["hidden_size"] == TINY["hidden_size"] and config["tie_word_embeddings"] is False
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == TINY["vocab"] and tok.bos_token_id is None and tok.pad_token_id == tok.eos_token_id
    digits = tok("s5=4.86", add_special_tokens=False)["input_ids"][-2:]
    assert tok.convert_ids_to_tokens(digits) == ["8", "6"]  # digits one by one, as Qwen2's


@pytest.mark.engine
@pytest.mark.skipif(bool(missing_requirements("pretrained")), reason="needs the bench extra (TRL)")
def test_quick_run_writes_every_measure(tmp_path, ray_session):
    from rlreg.commands.bench import run_benchmark
    from test_bench import check_schema

    out = Path(run_benchmark("pretrained", output=str(tmp_path / "pretrained.json"), quick=True))
    data = json.loads(out.read_text())
    check_schema(data, "pretrained")
    assert data["config"]["missing"] == [] and set(data["records"]) == {"step/float32", "answer_logits"}
    step = data["medians"]["step/float32"]
    assert step["params"] > 0 and step["seconds_per_step"]["rlreg"] > 0 and step["seconds_per_step"]["trl"] > 0
    assert step["ratio"] > 0 and data["ratios"]["step/float32"] == step["ratio"] == data["ratio"]
    assert len(step["load_average"]["before"]) == 3
    for forward in ("plain", "shared_prefix"):
        entry = data["medians"]["answer_logits"][forward]
        for variant in ("answer_only", "full_vocabulary"):
            assert entry[variant]["ms_per_step"] > 0 and entry[variant]["peak_mb"] > 0
        assert entry["loss_difference"] < 1e-4 and math.isfinite(entry["peak_ratio"])
        assert data["ratios"][f"answer_logits/{forward}/peak"] == entry["peak_ratio"]
    assert data["config"]["checkpoint"]["architecture"] == "Qwen2ForCausalLM"
    assert data["medians"]["answer_logits"]["params"] == step["params"]


COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "pretrained.json"


@pytest.mark.skipif(not COMMITTED.is_file(), reason="no committed benchmarks/results/pretrained.json")
def test_a_stopped_run_resumes_with_only_the_missing_measures(tmp_path, monkeypatch):
    """Records already in the output are kept; only the missing measures run, each written at once."""
    from benchmarks import pretrained
    from benchmarks.common import BenchArgs

    stored = json.loads(COMMITTED.read_text())
    records = stored["records"]
    out = tmp_path / "pretrained.json"
    out.write_text(json.dumps({**stored, "records": {"step/float32": records["step/float32"]}}))
    ran, written = [], []
    monkeypatch.setattr(pretrained, "native_bf16", lambda: True)
    monkeypatch.setattr(pretrained, "make_checkpoint", lambda where, shape: where)
    monkeypatch.setattr(pretrained, "measure_answer_logits",
                        lambda ckpt, args, root: ran.append("answer_logits") or records["answer_logits"])
    monkeypatch.setattr(pretrained, "measure_step", lambda ckpt, dtype, args, root: ran.append(dtype) or
                        {**records["step/float32"], "dtype": dtype})
    monkeypatch.setattr("benchmarks.fixtures.start_ray", lambda: None)
    real_write = pretrained.write_result
    monkeypatch.setattr(pretrained, "write_result",
                        lambda data, path, quick: written.append(list(data["records"])) or real_write(data, path, quick))
    data = pretrained.run(BenchArgs(repeats=stored["fingerprint"]["repeats"], output=out))
    assert ran == ["answer_logits", "bfloat16"]
    assert written == [["step/float32", "answer_logits"], ["step/float32", "answer_logits", "step/bfloat16"]]
    assert data["config"]["missing"] == [] and data["load_average"]["before"] == stored["load_average"]["before"]
    assert data["ratio"] == records["step/float32"]["ratio"]

    # nothing left to measure, and no native bf16: bf16 is skipped, saying why, and nothing is built
    out.write_text(json.dumps({**stored, "records": {k: records[k] for k in ("step/float32", "answer_logits")}}))
    monkeypatch.setattr(pretrained, "native_bf16", lambda: False)
    monkeypatch.setattr(pretrained, "make_checkpoint", lambda where, shape: pytest.fail("nothing to measure"))
    data = pretrained.run(BenchArgs(repeats=stored["fingerprint"]["repeats"], output=out))
    assert "step/bfloat16" in data["config"]["skipped"] and data["config"]["measured"] == ["step/float32",
                                                                                           "answer_logits"]

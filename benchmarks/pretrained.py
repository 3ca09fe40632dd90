"""pretrained: rlreg started from a pretrained Hugging Face checkpoint (`model.pretrained`) at the
size users start from — a ≈ 100 M-parameter Qwen2-style causal LM with a 32,000-token byte-level
BPE vocabulary (random weights; made on the fly, nothing is downloaded) — on two measures:

1. "step/DTYPE": one RL step of rlreg (RLRunner.step) against TRL's GRPOTrainer on the same adopted
   checkpoint, batch and G: benchmarks.step.measure_size as is, with the size name standing for the
   checkpoint (benchmarks.fixtures.pretrained_size), float32 first, then bfloat16 (skipped on a CPU
   without native bf16 matmuls, see native_bf16).
2. "answer_logits": the learner's forward+backward with answer-only logits against full-vocabulary
   logits on the same checkpoint: benchmarks.answer_logits' per-variant processes and interleaved
   steps as they are, each child loading the adopted checkpoint instead of building its own model,
   and reading diabetes prompts encoded with the checkpoint's tokenizer.

The tokenizer is a real byte-level BPE (Qwen2's pre-tokenizer: digits one by one, then bytes)
trained to 32,000 tokens on a generated corpus (pseudo-words from syllables plus "key=value" rows
like the prompts), about 5 s; the model has 64 spare embedding rows, as Qwen2's checkpoints do, so
adoption adds the number tokens without resizing.

Each finished measure is written to the output JSON at once (with `records` and a settings
`fingerprint`); the same command run again skips the measures already there, so a stopped run
keeps what it measured and resumes."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from benchmarks.checkpoints import bpe_tokenizer, write_checkpoint
from benchmarks.common import RESULTS_DIR, BenchArgs, load_average, machine_info, print_table, result, write_result

NAME = "pretrained"
REQUIRES: tuple[str, ...] = ("trl", "datasets")
SIZE = "qwen2-100M"  # the size name the pretrained checkpoint goes by in benchmarks.step
# ≈ 99.5 M parameters with the untied head (the shape of benchmarks/answer_logits.py's model).
CHECKPOINT = {"vocab": 32000, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 8,
              "num_attention_heads": 12, "num_key_value_heads": 4, "tie_word_embeddings": False}
TINY = {"vocab": 1024, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": False}
SPARE_ROWS = 64
PEERS = ("trl",)  # TRL with transformers generate; the vLLM colocate peer is left out for time
MEASURES = ("step/float32", "answer_logits", "step/bfloat16")
QUICK_MEASURES = ("step/float32", "answer_logits")


# --- the checkpoint -------------------------------------------------------------------------------

def corpus(lines: int = 40000, seed: int = 0) -> list[str]:
    """Generated text to train the BPE on: pseudo-words of 1-4 syllables (enough distinct pairs for
    32k merges) and "key=value" rows like the diabetes prompts."""
    rng = random.Random(seed)
    consonants = "b c d f g h j k l m n p r s t v w z ch sh th st tr pl gr br".split()
    vowels = "a e i o u y ai ea ou io".split()
    syllables = [c + v for c in consonants for v in vowels] + [v + c for v in vowels for c in consonants[:10]]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(60000)]
    keys = ["age", "sex", "bmi", "bp", *(f"s{i}" for i in range(1, 7)), "value", "score", "answer"]
    out = []
    for k in range(lines):
        if k % 8 == 0:
            out.append(" ".join(f"{rng.choice(keys)}={rng.uniform(0, 300):.{rng.randint(0, 3)}f}" for _ in range(10)))
        else:
            out.append(" ".join(rng.choice(words) for _ in range(20)))
    return out


def make_checkpoint(out_dir: Path, shape: dict) -> Path:
    """A Qwen2ForCausalLM checkpoint (random weights, seeded, float32 safetensors) with a BPE of
    shape["vocab"] tokens trained on corpus()."""
    shape = dict(shape)
    tokenizer = bpe_tokenizer("qwen2", corpus(), shape.pop("vocab"), exact=True)
    return write_checkpoint(out_dir, "qwen2", tokenizer, shape, SPARE_ROWS, max_positions=4096)


# --- TRL's prompts for a checkpoint without BOS ---------------------------------------------------

def prompt_texts(task, cfg) -> list[str]:
    """benchmarks.trl_peer.prompt_texts for any checkpoint: rlreg's prompt is [bos] + BPE(text) +
    [answer] with bos only where the model has one (Qwen2 has none), so TRL's text starts with the
    BOS token's string only then (build_trainer checks the ids are rlreg's)."""
    from tokenizers import Tokenizer

    from rlreg.data.render import render_prompts
    from rlreg.model.build import ANSWER
    from rlreg.rundir import ModelFiles

    bos_id = task.checkpoint.meta.bos_id
    bos = "" if bos_id is None else Tokenizer.from_file(str(task.model_dir / ModelFiles.TOKENIZER)).id_to_token(bos_id)
    return [f"{bos}{t}{ANSWER}" for t in render_prompts(task.dataset, task.dataset.splits.train, cfg.data)]


@contextlib.contextmanager
def _trl_prompts() -> Iterator[None]:
    from benchmarks import trl_peer

    original = trl_peer.prompt_texts
    trl_peer.prompt_texts = prompt_texts
    try:
        yield
    finally:
        trl_peer.prompt_texts = original


# --- measure 1: one RL step, rlreg vs TRL ---------------------------------------------------------

def measure_step(checkpoint: Path, dtype: str, args: BenchArgs, root: Path) -> dict:
    """benchmarks.step.measure_size with SIZE standing for the checkpoint: rlreg and TRL interleaved
    step by step, batch 8 × G 16 (2 × 4 quick), the 100 M settings of step.py (2 timed steps per
    side, TRL torch threads 2)."""
    from benchmarks import step
    from benchmarks.fixtures import pretrained_size

    batch, group = (2, 4) if args.quick else (8, 16)
    threads = (1,) if args.quick else step.THREADS_BY_SIZE["100M"]
    step_args = dataclasses.replace(args, repeats=min(args.repeats, step.REPEATS_BY_SIZE["100M"]))
    before = load_average()
    root.mkdir(parents=True, exist_ok=True)
    with pretrained_size(SIZE, checkpoint), _trl_prompts():
        record = step.measure_size(SIZE, step_args, batch, group, root, threads, dtype, peers=PEERS)
    record.update(batch_inputs=batch, group_size=group, timed_steps=step_args.repeats,
                  load_average={"before": before, "after": load_average()})
    return record


# --- measure 2: answer-only vs full-vocabulary logits ---------------------------------------------

def build_from_checkpoint(spec: dict):
    """benchmarks.answer_logits.build for the adopted checkpoint (child process): the policy as the
    learner loads it (fp32), the checkpoint's number head, the given prompts × G, random allowed
    number tokens and advantages (seeded, the same in both children)."""
    import numpy as np
    import torch

    from rlreg.model.checkpoint import load_checkpoint
    from rlreg.model.logprobs import NumberHead
    from rlreg.model.policy import load_policy

    checkpoint = load_checkpoint(spec["checkpoint"])
    policy = load_policy(str(checkpoint.model_dir), checkpoint.meta).train()
    numbers = checkpoint.number_tokenizer
    head = NumberHead(checkpoint.meta.number_token_ids, numbers.allowed)
    prompts = [p for p in spec["prompts"][:spec["inputs"]] for _ in range(spec["group"])]
    rng = np.random.default_rng(0)
    tokens = np.stack([rng.choice(np.flatnonzero(numbers.allowed[t]), size=len(prompts))
                       for t in range(numbers.length)], axis=1)
    advantages = torch.as_tensor(rng.normal(size=len(prompts)), dtype=torch.float32)
    return policy, head, (prompts, torch.as_tensor(tokens), advantages)


@contextlib.contextmanager
def _children_on(model_dir: Path, prompts: list[list[int]]) -> Iterator[None]:
    """benchmarks.answer_logits.run with its child processes started by this module (which loads
    the checkpoint) instead of answer_logits' own (which builds a model)."""
    from benchmarks import answer_logits as al

    class PretrainedChild(al.Child):
        def __init__(self, spec: dict):  # al.Child's, with this module as the child's main
            spec = {**spec, "checkpoint": str(model_dir), "prompts": prompts}
            env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
            self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.pretrained", json.dumps(spec)],
                                            cwd=al.ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            text=True)
            self.name = f"{spec['variant']}/{spec['forward']}"

    original = al.Child
    al.Child = PretrainedChild
    try:
        yield
    finally:
        al.Child = original


def measure_answer_logits(checkpoint: Path, args: BenchArgs, root: Path) -> dict:
    from benchmarks import answer_logits as al
    from benchmarks.fixtures import make_task

    before = load_average()
    _cfg, task = make_task(SIZE, root / "answer_logits", pretrained=checkpoint)  # adopted, fp32
    prompts = task.prompts["train"][:8]
    with _children_on(task.model_dir, prompts):
        data = al.run(args)
    config = {**data["config"], "model": "the adopted Qwen2-style checkpoint (model.pretrained), fp32",
              "prompt_tokens": [len(p) for p in prompts[:data["config"]["inputs"]]],
              "prompts": "the first diabetes train prompts, encoded with the checkpoint's tokenizer",
              "number_tokens": len(task.checkpoint.meta.number_token_ids),
              "number_format": task.number_tokenizer.describe(), "completion_tokens": task.number_tokenizer.length,
              "vocab_size": _vocab_rows(task.model_dir)}
    return {"config": config, "medians": data["medians"], "raw": data["raw"], "params": config["params"],
            "load_average": {"before": before, "after": load_average()}}


def _vocab_rows(model_dir: Path) -> int:
    return int(json.loads(Path(model_dir, "config.json").read_text())["vocab_size"])


# --- the run --------------------------------------------------------------------------------------

def output_path(args: BenchArgs) -> Path:
    """Where write_result puts this benchmark's JSON (partial records go there too)."""
    if args.output is not None:
        return Path(args.output)
    if args.quick:
        return Path(tempfile.gettempdir(), "rlreg-bench", f"{NAME}_quick.json")
    return RESULTS_DIR / f"{NAME}.json"


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX). Without it torch's bf16
    matmuls take a slow fallback (here, an AVX2-only AMD EPYC: ~90x fp32's time, so a 100 M bf16
    step did not finish in 20 minutes), and the bf16 measure is skipped, saying why."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True  # not Linux: try it
    return "avx512_bf16" in flags or "amx_bf16" in flags


def skipped(args: BenchArgs) -> dict[str, str]:
    if args.quick or native_bf16():
        return {}
    return {"step/bfloat16": "this CPU has no native bf16 matmul (no avx512_bf16 / amx_bf16 in /proc/cpuinfo): "
                             "torch's bf16 fallback is ~90x slower than fp32 here"}


def fingerprint(args: BenchArgs) -> dict:
    """The settings a stored record must share to be kept on resuming."""
    return {"checkpoint": TINY if args.quick else CHECKPOINT, "quick": args.quick, "repeats": args.repeats,
            "peers": list(PEERS)}


def run(args: BenchArgs) -> dict:
    from benchmarks import inside
    from benchmarks.fixtures import start_ray

    path = output_path(args)
    records: dict[str, dict] = {}
    load_before = load_average()
    if not args.quick and path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("fingerprint") == fingerprint(args):
            records = stored.get("records", {})
            load_before = stored["load_average"]["before"]  # the first sitting's; each record has its own
            print(f"resuming: {', '.join(records) or 'nothing'} already in {path}", flush=True)
    skip = skipped(args)
    measures = [m for m in (QUICK_MEASURES if args.quick else MEASURES) if m not in skip or m in records]
    for measure, why in skip.items():
        print(f"skipping {measure}: {why}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="rlreg-bench-pretrained-"))
    try:
        checkpoint = None
        for measure in measures:
            if measure in records:
                continue
            if checkpoint is None:
                checkpoint = make_checkpoint(root / "checkpoint", TINY if args.quick else CHECKPOINT)
            where = root / measure.replace("/", "-")
            if measure.startswith("step/"):
                start_ray()
                inside.ship_by_value()
                records[measure] = measure_step(checkpoint, measure.split("/")[1], args, where)
            else:
                records[measure] = measure_answer_logits(checkpoint, args, where)
            # A resumed run may sit on another machine: each record says which CPU it was measured on.
            records[measure]["machine"] = machine_info()["cpu_model"]
            shutil.rmtree(where, ignore_errors=True)
            write_result(_result(records, measures, args, load_before), path, False)  # kept if the run stops
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return _result(records, measures, args, load_before, table=True)


def _result(records: dict, measures, args: BenchArgs, load_before, table: bool = False) -> dict:
    from benchmarks.trl_peer import NOTES

    steps = {k: r for k, r in records.items() if k.startswith("step/")}
    logits = records.get("answer_logits")
    medians: dict = {k: {**{key: r[key] for key in ("dtype", "params", "seconds_per_step", "phases", "ratio",
                                                     "trl_threads", "rlreg_threads", "learner_bf16", "batch_inputs",
                                                     "group_size", "timed_steps", "load_average")},
                         "machine": r.get("machine", "not recorded")}
                     for k, r in steps.items()}
    raw: dict = {k: r["raw"] for k, r in steps.items()}
    ratios = {k: r["ratio"] for k, r in steps.items()}
    if logits is not None:
        medians["answer_logits"] = {**logits["medians"], "params": logits["params"],
                                    "load_average": logits["load_average"],
                                    "machine": logits.get("machine", "not recorded")}
        raw["answer_logits"] = logits["raw"]
        for forward in ("plain", "shared_prefix"):
            ratios[f"answer_logits/{forward}/peak"] = logits["medians"][forward]["peak_ratio"]
            ratios[f"answer_logits/{forward}/time"] = logits["medians"][forward]["time_ratio"]
    headline = next((k for k in ("step/float32", "step/bfloat16") if k in steps), None)
    if headline is not None:
        ratio, means = steps[headline]["ratio"], (
            f"TRL (transformers generate) seconds per RL step over rlreg seconds per RL step, {headline}, both "
            f"started from the same pretrained checkpoint")
    elif logits is not None:
        ratio, means = logits["medians"]["plain"]["peak_ratio"], (
            "peak MB of a learner step with full-vocabulary logits over answer-only logits, plain forward")
    else:
        ratio, means = float("nan"), "nothing measured yet"
    shape = TINY if args.quick else CHECKPOINT
    config = {"checkpoint": {"architecture": "Qwen2ForCausalLM", "weights": "random (seed 0), float32 safetensors",
                             **shape, "embedding_rows": shape["vocab"] + SPARE_ROWS,
                             "tokenizer": f"byte-level BPE trained to {shape['vocab']} tokens on a generated corpus "
                                          f"(benchmarks.pretrained.corpus), Qwen2 pre-tokenizer (single digits), "
                                          f"no BOS, <|endoftext|> = EOS = pad, ChatML template",
                             "started_through": "model.pretrained (rlreg.model.pretrained.adopt_pretrained: "
                                                "number tokens added as atomic tokens)"},
              "measures": list(measures), "measured": [m for m in measures if m in records],
              "missing": [m for m in measures if m not in records], "skipped": skipped(args), "peers": list(PEERS),
              "task": "sklearn:diabetes rows as text, numbers normalized base 2, 8 number tokens, GRPO, no KL, "
                      "1 PPO epoch, weights synced every step (benchmarks.fixtures.TASK, RL)",
              "step": "benchmarks.step.measure_size on the adopted checkpoint: rlreg and TRL steps interleaved, first "
                      "step of each side a warm-up; TRL torch threads 2 (1 in quick mode)",
              "answer_logits": "benchmarks.answer_logits.run with children loading the adopted checkpoint "
                                "(benchmarks.pretrained.build_from_checkpoint)",
              "repeats": args.repeats, "quick": args.quick}
    if table and steps:
        print_table("pretrained: seconds per RL step (median)", ["measure", "params", "rlreg s", "TRL s", "ratio"],
                    [[k, r["params"], r["seconds_per_step"]["rlreg"], r["seconds_per_step"]["trl"], r["ratio"]]
                     for k, r in steps.items()])
    notes = [*NOTES, "TRL's prompt text for a checkpoint without BOS: benchmarks.pretrained.prompt_texts replaces "
                     "trl_peer.prompt_texts during the step measures (no BOS string prepended for Qwen2)."]
    return result(NAME, config, medians, raw, float(ratio), means, load_before, notes=notes, target=3.0,
                  ratios=ratios, records=records, fingerprint=fingerprint(args))


if __name__ == "__main__":  # a child of the answer_logits measure
    from benchmarks import answer_logits as _al

    _al.build = build_from_checkpoint
    _al.serve(json.loads(sys.argv[1]))

"""answer_logits: the learner's step (forward + backward of the constrained-logprob RL loss) with
answer-only logits — hidden states for the whole sequence, logits only at the L answer positions and
only for the number tokens' rows of the LM head (rlreg.model.encoder.PolicyModel.forward with
number_token_ids) — against the full-vocabulary logits the learner computed before ([N, T, vocab],
then the number-token columns), on a ≈ 100 M-parameter Qwen2-style model with a 32 768-token
vocabulary (random weights, fp32), plain and shared-prefix forward.

The batch is an RL step's: 4 inputs × G = 8 samples, prompts of 44-52 tokens, 8 number tokens
(the ieee format, base 10: 14 number tokens, allowed sets by position). Both variants run the same
rlreg.model.logprobs.answer_logits; the full-vocabulary one gets the model wrapped so that it forms
the LM head's whole output and indexes it, as before. Each variant lives in its own Python process
(its memory its own), and the parent has the two processes take their steps in turn (A B, B A, ...)
so drifts in machine load hit both. Per step, after one untimed warm-up step: glibc's free memory is
returned (malloc_trim), the RSS read (`base_mb`: model, no gradients), the kernel's RSS high-water
mark reset (/proc/self/clear_refs) and read after the step (`peak_mb`, VmHWM); `step_mb` = peak -
base is what the step adds (activations, logits, gradients). `max_rss_mb` is each process's lifetime
high-water mark (getrusage). Ratio: full-vocabulary peak MB over answer-only peak MB, plain forward."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import BenchArgs, load_average, median, print_table, result

NAME = "answer_logits"
REQUIRES: tuple[str, ...] = ()
ROOT = Path(__file__).resolve().parents[1]
MODEL = {"vocab_size": 32768, "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 8,
         "num_attention_heads": 12, "num_key_value_heads": 4}
TINY = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1}
VARIANTS = ("answer_only", "full_vocabulary")
FORWARDS = ("plain", "shared_prefix")


def build(spec: dict):
    """(policy model, head, batch) — identical in every process (seeded)."""
    import numpy as np
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlreg.model.encoder import PolicyModel
    from rlreg.model.logprobs import NumberHead
    from rlreg.numbers.registry import build_number_tokenizer

    sizes = spec["model"]
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(Qwen2Config(**sizes, max_position_embeddings=128, tie_word_embeddings=False,
                                      pad_token_id=0))
    policy = PolicyModel(lm.float(), None, None).train()
    numbers = build_number_tokenizer({"tokenizer": "ieee", "base": 10})
    vocab = sizes["vocab_size"]
    head = NumberHead(range(vocab - len(numbers.tokens), vocab), numbers.allowed)
    rng = np.random.default_rng(0)
    inputs = [rng.integers(3, vocab - len(numbers.tokens), size=int(n)).tolist()
              for n in rng.integers(spec["prompt_tokens"] - 4, spec["prompt_tokens"] + 5, size=spec["inputs"])]
    prompts = [p for p in inputs for _ in range(spec["group"])]  # the G samples of one input together
    tokens = np.stack([rng.choice(np.flatnonzero(numbers.allowed[t]), size=len(prompts))
                       for t in range(numbers.length)], axis=1)
    advantages = torch.as_tensor(rng.normal(size=len(prompts)), dtype=torch.float32)
    return policy, head, (prompts, torch.as_tensor(tokens), advantages)


class FullVocabulary:
    """The learner's logits before answer-only logits: the LM head's whole [N, T, vocab] output,
    then the answer positions and the number-token columns (what answer_logits calls it with)."""

    def __init__(self, policy):
        self.policy = policy

    def parameters(self):
        return self.policy.parameters()

    def __call__(self, number_token_ids, logits_at=None, **inputs):
        import torch
        from transformers.modeling_outputs import CausalLMOutputWithPast

        out = self.policy(**inputs)
        logits = out.logits
        if logits_at is not None:
            logits = logits[torch.arange(logits.shape[0]).unsqueeze(1), logits_at]
        return CausalLMOutputWithPast(logits=logits.float().index_select(-1, number_token_ids),
                                      past_key_values=out.past_key_values)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def serve(spec: dict) -> None:
    """Child process: build, answer "step" lines on stdin with one measured step each (JSON on
    stdout), "done" with the process's totals."""
    import ctypes
    import resource

    from rlreg import device
    from rlreg.model.logprobs import answer_logits, gather_tokens

    device.configure_torch_threads()
    policy, head, (prompts, tokens, advantages) = build(spec)
    model = policy if spec["variant"] == "answer_only" else FullVocabulary(policy)
    shared = spec["forward"] == "shared_prefix"
    libc = ctypes.CDLL("libc.so.6")

    def step() -> float:
        logits = answer_logits(model, prompts, head.token_ids[tokens], 0, head.token_ids, shared_prefix=shared)
        loss = -(gather_tokens(head.logprobs(logits), tokens).sum(-1) * advantages).mean()
        loss.backward()
        policy.zero_grad(set_to_none=True)  # gradients count in the step, not in the next base
        return float(loss.detach())

    step()  # warm-up
    print(json.dumps({"ready": True, "params": sum(p.numel() for p in policy.parameters())}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        libc.malloc_trim(0)
        base = _rss_kb("VmRSS") / 1024
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        t0 = time.perf_counter()
        loss = step()
        seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds, "peak_mb": _rss_kb("VmHWM") / 1024, "base_mb": base, "loss": loss}),
              flush=True)
    print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


class Child:
    def __init__(self, spec: dict):
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.answer_logits", json.dumps(spec)],
                                        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        self.name = f"{spec['variant']}/{spec['forward']}"

    def ask(self, line: str) -> dict:
        if line:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        while True:
            out = self.process.stdout.readline()
            if not out:
                raise RuntimeError(f"answer_logits child {self.name} exited with {self.process.wait()}")
            if out.startswith("{"):
                return json.loads(out)

    def finish(self) -> dict:
        totals = self.ask("done")
        self.process.stdin.close()
        self.process.wait(timeout=60)
        return totals


def run(args: BenchArgs) -> dict:
    quick = args.quick
    # 4 inputs, not 8: on this shared 2-core machine one 64-row step took minutes (load ~20).
    spec = {"model": TINY if quick else MODEL, "inputs": 2 if quick else 4, "group": 2 if quick else 8,
            "prompt_tokens": 12 if quick else 48}
    load_before = load_average()
    raw: dict[str, dict] = {}
    params = 0
    for forward in FORWARDS:
        # Started one after the other: two builds at once would slow each other's warm-up only.
        children = {}
        for variant in VARIANTS:
            children[variant] = Child({**spec, "variant": variant, "forward": forward})
            params = children[variant].ask("")["params"]
        steps: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        try:
            for r in range(args.repeats):
                for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                    steps[variant].append(children[variant].ask("step"))
            totals = {v: children[v].finish() for v in VARIANTS}
        finally:
            for child in children.values():
                if child.process.poll() is None:
                    child.process.kill()
        raw[forward] = {v: {"steps": steps[v], **totals[v]} for v in VARIANTS}
        for v in VARIANTS:
            print(f"  {forward} {v}: {1e3 * median([s['seconds'] for s in steps[v]]):.0f} ms/step, "
                  f"peak {median([s['peak_mb'] for s in steps[v]]):.0f} MB", flush=True)
    medians: dict[str, dict] = {}
    for forward, by_variant in raw.items():
        entry = {}
        for v, r in by_variant.items():
            entry[v] = {"ms_per_step": 1e3 * median([s["seconds"] for s in r["steps"]]),
                        "peak_mb": median([s["peak_mb"] for s in r["steps"]]),
                        "base_mb": median([s["base_mb"] for s in r["steps"]]),
                        "step_mb": median([s["peak_mb"] - s["base_mb"] for s in r["steps"]]),
                        "max_rss_mb": r["max_rss_mb"], "loss": r["steps"][0]["loss"]}
        full, answer = entry["full_vocabulary"], entry["answer_only"]
        entry["time_ratio"] = full["ms_per_step"] / answer["ms_per_step"]
        entry["peak_ratio"] = full["peak_mb"] / answer["peak_mb"]
        entry["step_mb_ratio"] = full["step_mb"] / answer["step_mb"]
        entry["loss_difference"] = abs(full["loss"] - answer["loss"])
        medians[forward] = entry
    rows = [[f, v, medians[f][v]["ms_per_step"], medians[f][v]["peak_mb"], medians[f][v]["step_mb"],
             medians[f][v]["max_rss_mb"]] for f in FORWARDS for v in VARIANTS]
    print_table(f"answer_logits: one learner forward+backward, {params / 1e6:.1f} M params, "
                f"{spec['inputs'] * spec['group']} rows (median of {args.repeats})",
                ["forward", "logits", "ms/step", "peak MB", "step adds MB", "max RSS MB"], rows)
    for f in FORWARDS:
        print(f"  {f}: full/answer-only time {medians[f]['time_ratio']:.2f}x, peak {medians[f]['peak_ratio']:.2f}x, "
              f"step adds {medians[f]['step_mb_ratio']:.2f}x, loss difference {medians[f]['loss_difference']:.2g}")
    config = {"model": f"Qwen2ForCausalLM, random weights, {'tiny' if quick else '≈100M'}", **spec,
              "params": params, "rows": spec["inputs"] * spec["group"], "completion_tokens": 8,
              "number_tokens": 14, "number_format": "ieee base 10", "dtype": "float32", "timed_steps": args.repeats,
              "warmup_steps": 1, "loss": "-(constrained logp summed over the answer × advantage).mean()",
              "memory": "VmHWM after resetting it (clear_refs 5) right before the step; base = VmRSS after "
                        "malloc_trim, before the step; one process per variant, steps interleaved",
              "call": "rlreg.model.logprobs.answer_logits (+ NumberHead + backward); full_vocabulary: the same "
                      "with the model wrapped to form all-vocabulary logits (benchmarks.answer_logits.FullVocabulary)"}
    return result(NAME, config, medians, raw, medians["plain"]["peak_ratio"],
                  "peak MB of a step with full-vocabulary logits over peak MB with answer-only logits, plain "
                  "forward", load_before)


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))

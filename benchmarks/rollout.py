"""rollout: rlreg's rollout path (RolloutGroup → vLLM NumberEngine, per-position constraint) vs
HF transformers `generate` on the same model with the same constraint (a LogitsProcessor over the
same allowed table): same prompts, G, number length, temperature 1 — generated tokens per second.

Each size is measured in float32 and bfloat16 (model.dtype: rlreg's engine runs in the model's
dtype), HF generate with the model loaded in the same dtype; results are keyed "SIZE/DTYPE".

Every round uses a fresh batch of prompts (the same one on both sides), as RL steps do, so vLLM's
prefix cache only helps within one call (the G samples of an input), never across rounds."""
from __future__ import annotations

import numpy as np

from benchmarks.common import BenchArgs, interleaved, load_average, median, print_table, result, timed
from benchmarks.fixtures import make_task, parameter_count, start_ray, workdir

NAME = "rollout"
REQUIRES: tuple[str, ...] = ()


DTYPES = ("float32", "bfloat16")


def hf_sampler(model_dir, allowed: list[list[int]], pad_id: int, group: int, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from benchmarks.hf_constraint import constrained

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    length = len(allowed)
    # Plain multinomial sampling at temperature 1: no top-k/top-p (rlreg applies none either).
    gen = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=length,
                           num_return_sequences=group, pad_token_id=pad_id, eos_token_id=None)

    def sample(prompts: list[list[int]]) -> np.ndarray:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: every completion starts at the same column
            ids[i, width - len(p):] = torch.as_tensor(p)
            mask[i, width - len(p):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                 logits_processor=constrained(allowed, ids))
        return out[:, width:].reshape(len(prompts), group, -1).numpy()

    return sample


def check_allowed(tokens: np.ndarray, allowed: list[list[int]], who: str) -> None:
    """Both sides must really sample under the constraint (else the comparison is meaningless)."""
    for position, ids in enumerate(allowed):
        if not np.isin(tokens[..., position], ids).all():
            raise AssertionError(f"{who}: a token outside the allowed set at position {position}")


def measure_size(size: str, args: BenchArgs, batch: int, group: int, root, hf_threads: tuple[int, ...],
                 dtype: str = "float32") -> dict:
    import torch

    from rlreg.actors.rollout import RolloutGroup
    from rlreg.device import model_dtype

    cfg, task = make_task(size, root, dtype=dtype)
    if model_dtype(task.model_dir) != dtype:  # the engine (engine.dtype "model") and HF both read this
        raise AssertionError(f"model built in {model_dtype(task.model_dir)}, not {dtype}")
    allowed = task.allowed_hf
    length = len(allowed)
    rollout = RolloutGroup(task.model_dir, cfg.engine, cfg.model.max_positions, cfg.ray, workers=1)
    hf = hf_sampler(task.model_dir, allowed, task.codec.meta.pad_id, group, dtype)
    prompts = task.prompts["train"]
    calls: dict[str, int] = {}

    def batch_for(side: str) -> list[list[int]]:
        """The k-th call of every side gets the same, fresh batch of prompts."""
        k = calls[side] = calls.get(side, -1) + 1
        start = (k * batch) % max(1, len(prompts) - batch)
        return prompts[start : start + batch]

    def run_rlreg() -> float:
        p = batch_for("rlreg")
        out = {}
        t = timed(lambda: out.setdefault("s", rollout.sample({"prompts": p}, allowed, group, 1.0)))
        check_allowed(out["s"].token_ids, allowed, "rlreg")
        return t

    def run_hf(threads: int):
        def call() -> float:
            torch.set_num_threads(threads)  # HF runs in this process: try each setting, count the fastest
            p = batch_for(f"hf_{threads}")
            out = {}
            t = timed(lambda: out.setdefault("s", hf(p)))
            check_allowed(out["s"], allowed, "hf_generate")
            return t
        return call

    runners = {"rlreg": run_rlreg, **{f"hf_generate_{t}_threads": run_hf(t) for t in hf_threads}}
    try:
        raw = interleaved(runners, args.repeats)
    finally:
        rollout.shutdown()
    tokens = batch * group * length
    seconds = {k: median(v) for k, v in raw.items()}
    best = min((k for k in seconds if k.startswith("hf_")), key=seconds.get)
    seconds["hf_generate"] = seconds[best]
    return {"dtype": dtype, "size": size, "params": parameter_count(task), "prompt_tokens_mean": float(np.mean([len(p) for p in prompts])),
            "seconds": seconds, "tokens_per_s": {k: tokens / s for k, s in seconds.items()}, "hf_fastest": best,
            "ratio": seconds["hf_generate"] / seconds["rlreg"], "raw_seconds": raw}


def run(args: BenchArgs) -> dict:
    sizes = ["tiny"] if args.quick else ["1M", "25M", "100M"]
    dtypes = ("float32",) if args.quick else DTYPES
    batch, group = (2, 4) if args.quick else (8, 16)
    load_before = load_average()
    start_ray()
    hf_threads = (1,) if args.quick else (1, 2)
    per_size = {}
    for size in sizes:
        for dtype in dtypes:
            with workdir() as root:  # one model at a time on disk (100 M: ~0.4 GB in fp32)
                per_size[f"{size}/{dtype}"] = measure_size(size, args, batch, group, root, hf_threads, dtype)
            print(f"  rollout {size}/{dtype}: ratio {per_size[f'{size}/{dtype}']['ratio']:.3g}", flush=True)
    headline = f"{sizes[-1]}/{dtypes[-1]}"
    config = {"sizes": sizes, "dtypes": list(dtypes), "batch_inputs": batch, "group_size": group,
              "number_tokens": 8, "temperature": 1.0,
              "dtype": "per row (keys SIZE/DTYPE): rlreg's model and vLLM engine in that dtype, HF generate's "
                       "model loaded in the same dtype",
              "repeats": args.repeats, "warmup_rounds": 1,
              "rlreg": "RolloutGroup (1 Ray actor, in-process vLLM engine, prefix caching, block 32)",
              "peer": "transformers generate (KV cache, left-padded batch, num_return_sequences=G)",
              "torch_threads": "rlreg: ray.torch_threads default (all cores) in the actor; HF: each of "
                               f"{list(hf_threads)} tried in this process, fastest counted"}
    medians = {size: {"tokens_per_s": r["tokens_per_s"], "seconds": r["seconds"], "params": r["params"],
                      "ratio": r["ratio"], "hf_fastest": r["hf_fastest"], "size": r["size"], "dtype": r["dtype"]}
               for size, r in per_size.items()}
    rows = [[r["size"], r["dtype"], r["params"], r["tokens_per_s"]["rlreg"], r["tokens_per_s"]["hf_generate"], r["hf_fastest"],
             r["ratio"]] for size, r in per_size.items()]
    print_table("rollout: generated number tokens per second (median)",
                ["size", "dtype", "params", "rlreg tok/s", "HF generate tok/s", "HF fastest", "ratio"], rows)
    return result(NAME, config, medians, {s: r["raw_seconds"] for s, r in per_size.items()},
                  per_size[headline]["ratio"], f"rlreg tokens/s over HF generate tokens/s at {headline} (same dtype both sides)",
                  load_before, target=3.0,
                  ratios={k: r["ratio"] for k, r in per_size.items()},
                  min_ratio=min(r["ratio"] for r in per_size.values()))

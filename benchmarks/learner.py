"""learner: the learner's forward + backward over G completions per prompt, shared-prefix (each
prompt encoded once, its KV cache indexed out to its G completions) vs plain (every
[prompt + completion] row in full) — rlreg.model.logprobs.answer_logits with shared_prefix on/off
on an HF Llama of ≈ 25 M parameters; prompt 64 tokens, completion 8, G ∈ {4, 16, 64}.

Throughput counts the tokens each row covers, (64 + 8) × rows, on both sides, so the ratio is the
time ratio. The loss is the RL objective's shape: constrained number logprobs × advantages."""
from __future__ import annotations

from benchmarks.common import SIZES, BenchArgs, interleaved, load_average, median, print_table, result, timed

NAME = "learner"
REQUIRES: tuple[str, ...] = ()
VOCAB = 530  # ≈ the benchmark task's: 512 BPE + specials + number tokens
NUMBER_IDS = [520, 521]  # base-2 digits


def build_model(size: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlreg.model.encoder import PolicyModel

    spec = SIZES[size]
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=spec["hidden"], intermediate_size=4 * spec["hidden"],
                         num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                         num_key_value_heads=spec["heads"], head_dim=spec["hidden"] // spec["heads"],
                         max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0)
    torch.manual_seed(0)
    return PolicyModel(LlamaForCausalLM(config), None, None).float().train()


def make_batch(n_prompts: int, group: int, prompt_len: int, length: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    base = [torch.randint(3, 512, (prompt_len,), generator=g).tolist() for _ in range(n_prompts)]
    prompts = [p for p in base for _ in range(group)]  # the G samples of one input sit together
    digits = torch.randint(0, len(NUMBER_IDS), (len(prompts), length), generator=g)
    advantages = torch.randn(len(prompts), generator=g)
    return prompts, digits, advantages


def step_fn(model, head, batch, shared: bool):
    from rlreg.model.logprobs import answer_logits, gather_tokens

    prompts, digits, advantages = batch

    def step() -> None:
        logits = answer_logits(model, prompts, head.token_ids[digits], 0, head.token_ids, shared_prefix=shared)
        logp = gather_tokens(head.logprobs(logits), digits)
        loss = -(logp.sum(-1) * advantages).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def max_difference(model, head, batch) -> float:
    """The two forwards must agree (else the speed-up would be meaningless)."""
    import torch

    from rlreg.model.logprobs import answer_logits

    prompts, digits, _ = batch
    with torch.no_grad():
        a = answer_logits(model, prompts, head.token_ids[digits], 0, head.token_ids, shared_prefix=True)
        b = answer_logits(model, prompts, head.token_ids[digits], 0, head.token_ids, shared_prefix=False)
    return float((a - b).abs().max())


def run(args: BenchArgs) -> dict:
    import numpy as np

    from rlreg import device
    from rlreg.model.logprobs import NumberHead

    size = "tiny" if args.quick else "25M"
    groups = (4,) if args.quick else (4, 16, 64)
    n_prompts, prompt_len, length = (1, 16, 4) if args.quick else (2, 64, 8)
    load_before = load_average()
    device.configure_torch_threads()
    model = build_model(size)
    params = sum(p.numel() for p in model.parameters())
    head = NumberHead(NUMBER_IDS, np.ones((length, len(NUMBER_IDS)), dtype=bool))
    raw, medians, rows, checks = {}, {}, [], {}
    for group in groups:
        batch = make_batch(n_prompts, group, prompt_len, length, seed=group)
        checks[str(group)] = max_difference(model, head, batch)
        runners = {name: (lambda fn=step_fn(model, head, batch, shared): timed(fn))
                   for name, shared in (("shared_prefix", True), ("plain", False))}
        raw[str(group)] = interleaved(runners, args.repeats)
        tokens = len(batch[0]) * (prompt_len + length)
        seconds = {k: median(v) for k, v in raw[str(group)].items()}
        tps = {k: tokens / s for k, s in seconds.items()}
        ratio = seconds["plain"] / seconds["shared_prefix"]
        medians[str(group)] = {"seconds": seconds, "tokens_per_s": tps, "ratio": ratio, "rows": len(batch[0])}
        rows.append([group, len(batch[0]), tps["shared_prefix"], tps["plain"], ratio])
    headline = "16" if "16" in medians else str(groups[-1])
    print_table(f"learner: forward+backward tokens/s (median), {params / 1e6:.1f} M params",
                ["G", "rows", "shared-prefix tok/s", "plain tok/s", "ratio"], rows)
    config = {"size": size, "params": params, "groups": list(groups), "prompts_per_batch": n_prompts,
              "prompt_tokens": prompt_len, "completion_tokens": length, "dtype": "float32",
              "repeats": args.repeats, "warmup_rounds": 1, "tokens_counted": "rows × (prompt + completion)",
              "call": "rlreg.model.logprobs.answer_logits(shared_prefix=True/False) + NumberHead + backward"}
    return result(NAME, config, medians, raw, medians[headline]["ratio"],
                  f"plain seconds over shared-prefix seconds (= tokens/s ratio) at G={headline}", load_before,
                  target=2.5, max_abs_logit_difference=checks)

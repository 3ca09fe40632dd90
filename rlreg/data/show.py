"""`rlreg data show SOURCE`: a plain-text report of what a data source loads as."""
from __future__ import annotations

from rlreg.data.config import DataConfig
from rlreg.data.dataset import Dataset, target_stats
from rlreg.data.render import render_prompts
from rlreg.data.sources import load_dataset
from rlreg.data.splits import SPLIT_NAMES

PREVIEW_ROWS = 5
PROMPT_PREVIEW_CHARS = 160
MAX_LISTED_FEATURES = 40


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _stats_line(label: str, stats: dict) -> str:
    if stats.get("count", 0) == 0:
        return f"  {label:<6} (empty)"
    quantiles = " ".join(f"{k}={_fmt(v)}" for k, v in stats.items() if k.startswith("q"))
    return (f"  {label:<6} n={stats['count']:<7} min={_fmt(stats['min'])} max={_fmt(stats['max'])} "
            f"mean={_fmt(stats['mean'])} std={_fmt(stats['std'])} {quantiles}")


def _feature_lines(dataset: Dataset) -> list[str]:
    if dataset.text_fields is not None:
        # Lengths, because a long response is what overflows model.max_positions.
        lines = [f"text fields: {len(dataset.text_fields)} ({', '.join(dataset.text_fields)})"]
        for name, values in dataset.text_fields.items():
            chars = [len(v) for v in values] or [0]
            lines.append(f"  {name!r}: {sum(chars) / len(chars):.0f} chars on average, "
                         f"longest {max(chars)}")
        return lines
    if dataset.kind == "text":
        return ["features: none (text inputs)"]
    names = dataset.feature_names
    listed = ", ".join(names[:MAX_LISTED_FEATURES])
    if len(names) > MAX_LISTED_FEATURES:
        listed += f", ... (+{len(names) - MAX_LISTED_FEATURES} more)"
    lines = [f"features: {len(names)} ({listed})"]
    for col, cats in dataset.categorical.items():
        lines.append(f"  categorical {col!r}: {len(cats)} values ({', '.join(cats[:20])}) "
                     f"-> {dataset.categorical_encoding}")
    return lines


def describe_dataset(dataset: Dataset, cfg: DataConfig) -> str:
    sizes = dataset.splits.sizes()
    how = (f"official split {cfg.split}" if dataset.splits.official
           else f"seeded split, seed {cfg.seed}")
    lines = [
        f"source: {dataset.source or cfg.source}",
        f"path: {dataset.source_path or '(built in, no file)'}",
        f"kind: {dataset.kind}",
        f"size: {dataset.n_rows} rows",
        *_feature_lines(dataset),
        f"target: {dataset.target_name}",
        _stats_line("all", target_stats(dataset.y)),
        *(_stats_line(name, stats) for name, stats in dataset.split_target_stats().items()),
        "splits: " + ", ".join(f"{name} {sizes[name]}" for name in SPLIT_NAMES) + f" ({how})",
    ]
    if dataset.notes:
        lines.append("notes:")
        lines.extend(f"  - {note}" for note in dataset.notes)
    n = min(PREVIEW_ROWS, dataset.n_rows)
    membership = {int(i): name for name in SPLIT_NAMES for i in dataset.splits[name]}
    lines.append(f"first {n} rows as prompts (input={cfg.input}):")
    for i, prompt in enumerate(render_prompts(dataset, list(range(n)), cfg)):
        prompt = prompt.replace("\n", "\\n")  # one preview line a row, multi-line prompts too
        if len(prompt) > PROMPT_PREVIEW_CHARS:
            prompt = prompt[:PROMPT_PREVIEW_CHARS - 3] + "..."
        lines.append(f"  [{membership.get(i, '?')}] {prompt}  ->  {_fmt(dataset.y[i])}")
    return "\n".join(lines)


def show_dataset(cfg: DataConfig) -> str:
    """Load the source named by cfg and describe it (what `rlreg data show` prints)."""
    return describe_dataset(load_dataset(cfg), cfg)

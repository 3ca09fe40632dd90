"""`rlreg compare`: finished runs side by side — their test and validation metrics, the settings
that differ between their resolved configs, and their validation-RMSE and reward curves.
Reads run directories and returns rows, text and a figure; the command writes the files."""
from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Sequence

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlreg.configlib import read_yaml
from rlreg.errors import ConfigError
from rlreg.io import read_jsonl
from rlreg.evaluate.report import format_table
from rlreg.rundir import RunDir

SPLITS = ("test", "val")
METRICS = ("rmse", "rmse_ci", "mae", "r2")
METRIC_COLUMNS = ["run", "model", *(f"{split}_{name}" for split in SPLITS for name in METRICS)]
IGNORED_SETTINGS = ("run_dir",)  # differs between any two runs by construction


@dataclass
class ComparedRun:
    label: str  # the run directory's name (its path as given when two names clash)
    run: RunDir
    metrics: dict  # metrics.json
    config: dict  # config.yaml, nested sections
    sft_log: list[dict]
    rl_log: list[dict]


def read_log(path: Path) -> list[dict]:
    """A step log's records; a line cut short by a crash is skipped, as a resumed run drops it."""
    return [record for _, record in read_jsonl(path)
            if isinstance(record, dict) and isinstance(record.get("step"), int)]


def load_run(path: str | Path) -> ComparedRun:
    """A finished `rlreg sft` / `rlreg train` run; ConfigError naming the directory otherwise."""
    run = RunDir.existing(path)
    if not run.metrics.is_file():
        raise ConfigError(f"run directory {path}: no {run.metrics.name} there "
                          f"(the run has not finished, or is not an `rlreg sft` / `rlreg train` run)")
    try:
        metrics = json.loads(run.metrics.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"run directory {path}: {run.metrics.name} cannot be read ({err})") from err
    if not isinstance(metrics, dict):
        raise ConfigError(f"run directory {path}: {run.metrics.name} does not hold a mapping of results")
    return ComparedRun(label=run.path.resolve().name, run=run, metrics=metrics, config=read_yaml(run.config),
                       sft_log=read_log(run.log("sft")), rl_log=read_log(run.log("rl")))


def load_runs(paths: Sequence[str | Path]) -> list[ComparedRun]:
    if not paths:
        raise ConfigError("give at least one run directory")
    runs = [load_run(path) for path in paths]
    seen: set[Path] = set()
    for compared in runs:
        where = compared.run.path.resolve()
        if where in seen:
            raise ConfigError(f"run directory {compared.run} is given twice")
        seen.add(where)
    labels = [compared.label for compared in runs]
    if len(set(labels)) < len(labels):  # e.g. sweep_a/best and sweep_b/best: label by the path given
        for compared in runs:
            compared.label = str(compared.run.path)
    return runs


# -- the metrics table ---------------------------------------------------------------------------
def _metric_cells(result: Any) -> dict:
    cells = {}
    for split in SPLITS:
        block = result.get(split) if isinstance(result, dict) else None
        block = block if isinstance(block, dict) else {}
        cells.update({f"{split}_{name}": block.get(name) for name in METRICS})
    return cells


def metrics_rows(runs: Sequence[ComparedRun]) -> list[dict]:
    """One row per run's final model; a `rlreg train` run adds its supervised model ("before")
    first, named as `rlreg train` names them (CE, then CE+REMAX)."""
    rows = []
    for compared in runs:
        metrics = compared.metrics
        model = str(metrics.get("method", "model"))
        if isinstance(metrics.get("before"), dict):
            rows.append({"run": compared.label, "model": model, **_metric_cells(metrics["before"])})
            model = f"{model}+{str(metrics.get('algorithm', 'rl')).upper()}"
        rows.append({"run": compared.label, "model": model, **_metric_cells(metrics)})
    return rows


# -- the settings that differ --------------------------------------------------------------------
def flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """Nested sections to dotted keys (`rl.lr`); an empty section stays a value, so {} vs {a: 1} shows."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def differing_settings(configs: dict[str, dict]) -> list[dict]:
    """[{"key": dotted key, "values": {label: value}}] for each key whose value is not the same in
    every config, in config order. A config that lacks the key differs, and is left out of values."""
    flat = {label: flatten(config) for label, config in configs.items()}
    keys = dict.fromkeys(key for settings in flat.values() for key in settings)
    differing = []
    for key in keys:
        if key in IGNORED_SETTINGS:
            continue
        values = {label: settings[key] for label, settings in flat.items() if key in settings}
        first = next(iter(values.values()))
        if len(values) < len(flat) or any(value != first for value in values.values()):
            differing.append({"key": key, "values": values})
    return differing


def setting_text(value: Any) -> str:
    """As a dotted override would spell it (YAML): null, true, 3.0e-05, [hgb, ridge]."""
    if isinstance(value, str):
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text.removesuffix("...").strip()  # a scalar document ends with the "..." marker


def settings_text(differing: list[dict], labels: Sequence[str]) -> str:
    if len(labels) < 2:
        return "settings: one run, nothing to compare"
    if not differing:
        return "settings: the same in every run (run_dir aside)"
    rows = [{"setting": item["key"], **{label: setting_text(value) for label, value in item["values"].items()}}
            for item in differing]
    return "settings that differ (run_dir aside; - = not in that run's config):\n" + \
        format_table(rows, ["setting", *labels])


# -- the curves ----------------------------------------------------------------------------------
def _points(records: list[dict], key: str, offset: int = 0, step_shift: int = 0) -> list[tuple[int, float]]:
    """(step, value) of the records holding `key`; a null value (a NaN when logged) breaks the line."""
    return [(record["step"] + step_shift + offset, float("nan") if record[key] is None else float(record[key]))
            for record in records if key in record]


def curves(compared: ComparedRun) -> dict[str, list[tuple[int, float]]]:
    """Against the number of steps done. The supervised stage logs its 0-based loop step and a
    greedy-decode validation RMSE; RL logs steps done, val_rmse on eval steps (mean of
    rl.eval_samples samples) and reward_mean. On the RMSE axis RL continues after the supervised steps."""
    train = [record for record in compared.sft_log if record.get("split") == "train"]
    val = [record for record in compared.sft_log if record.get("split") == "val"]
    sft_steps = max((record["step"] + 1 for record in train), default=0)
    return {"sft_val_rmse": _points(val, "greedy_rmse", step_shift=1),
            "rl_val_rmse": _points(compared.rl_log, "val_rmse", offset=sft_steps),
            "reward_mean": _points(compared.rl_log, "reward_mean")}


def steps_done(compared: ComparedRun) -> dict[str, int]:
    sft = [record["step"] + 1 for record in compared.sft_log if record.get("split") == "train"]
    return {"sft": max(sft, default=0), "rl": max((record["step"] for record in compared.rl_log), default=0)}


def plot_curves(runs: Sequence[ComparedRun]) -> Figure:
    """Two panels, one colour per run: validation RMSE (supervised solid, RL dashed) and RL mean reward.
    A run without a curve gets a legend entry saying so instead of a line."""
    # An explicit Agg canvas, as in rlreg.evaluate.plots: no display, no pyplot global state.
    figure = Figure(figsize=(11.0, 4.5), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    rmse_axes, reward_axes = figure.subplots(1, 2)
    for index, compared in enumerate(runs):
        color, lines = f"C{index % 10}", curves(compared)
        if lines["sft_val_rmse"]:
            rmse_axes.plot(*zip(*lines["sft_val_rmse"]), color=color, marker="o", markersize=3,
                           label=f"{compared.label} supervised (greedy)")
        if lines["rl_val_rmse"]:
            rmse_axes.plot(*zip(*lines["rl_val_rmse"]), color=color, linestyle="--", marker="s", markersize=3,
                           label=f"{compared.label} RL (mean of samples)")
        if not (lines["sft_val_rmse"] or lines["rl_val_rmse"]):
            rmse_axes.plot([], [], color=color, linestyle=":", label=f"{compared.label}: no validation log")
        if lines["reward_mean"]:
            # markers: a point between two null rewards has no line segment to show it
            reward_axes.plot(*zip(*lines["reward_mean"]), color=color, marker="o", markersize=3, label=compared.label)
        else:
            reward_axes.plot([], [], color=color, linestyle=":", label=f"{compared.label}: no RL log")
    for axes, xlabel, ylabel, title in (
            (rmse_axes, "step (supervised, then RL)", "validation RMSE (original units)", "validation RMSE"),
            (reward_axes, "RL step", "mean reward", "mean reward")):
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# -- the whole comparison ------------------------------------------------------------------------
def summarize(runs: Sequence[ComparedRun]) -> dict:
    """What the table and the JSON hold: the runs, the metric rows, the settings that differ."""
    return {"runs": [{"label": compared.label, "path": str(compared.run), "stage": compared.metrics.get("stage"),
                      "method": compared.metrics.get("method"), "dataset": compared.metrics.get("dataset"),
                      "steps": steps_done(compared)} for compared in runs],
            "metrics_columns": METRIC_COLUMNS,
            "metrics": metrics_rows(runs),
            "settings": differing_settings({compared.label: compared.config for compared in runs})}


def summary_text(summary: dict) -> str:
    labels = [entry["label"] for entry in summary["runs"]]
    return "\n".join([f"metrics of {len(labels)} run(s) (original units; CI: 95 % bootstrap):",
                      format_table(summary["metrics"], summary["metrics_columns"]), "",
                      settings_text(summary["settings"], labels)])

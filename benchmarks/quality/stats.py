"""Statistics and reporting for the quality benchmark (benchmarks/quality/runner.py): pure functions of
the per-run records, so the numbers in the tables can be tested without training anything.

Input records, one per (dataset, split, method):
    {"dataset", "split", "method", "rmse", "rmse_ci": [lo, hi], "scale"}
where `scale` is the test RMSE of predicting the train mean on that split. Sampling-curve records
are {"dataset", "split", "method", "k", "rmse"}. A failed run has rmse NaN (or None): it is left
out of every statistic and counted in `n_failed`, never raised on.

Few splits per dataset are affordable on this machine, so every estimate carries an interval:
Student t over splits per dataset, and across datasets the interquartile mean of normalised
scores with a stratified bootstrap (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical
Precipice"). Every output is JSON-serialisable with `allow_nan=False`: "no value" is None."""
from __future__ import annotations

import math
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

METHOD_ORDER = ("Ridge", "HGB", "RegHead", "CE", "CE+NTL", "CE+ReMax", "CE+GRPO", "CE+GenRe2")
RL_METHODS = ("CE+ReMax", "CE+GRPO", "CE+GenRe2")
LEVEL = 0.95

Record = dict[str, Any]


# --- helpers -------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    """A finite float, or None (failed run / no value): keeps NaN out of the JSON."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _ci(lo: Any, hi: Any) -> list[float] | None:
    lo, hi = _num(lo), _num(hi)
    return None if lo is None or hi is None else [lo, hi]


def order_methods(methods: Iterable[str]) -> list[str]:
    """Baselines first, then CE and its variants (METHOD_ORDER); unknown names after, as seen."""
    seen = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in seen]
    return known + [m for m in seen if m not in METHOD_ORDER]


def _index(records: Iterable[Record]) -> dict[str, dict[str, dict[int, Record]]]:
    """dataset -> method -> split -> record. A duplicate run is a bug upstream: raise rather than
    silently keep one of them."""
    out: dict[str, dict[str, dict[int, Record]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        ds, m, s = str(r["dataset"]), str(r["method"]), int(r["split"])
        if s in out[ds][m]:
            raise ValueError(f"duplicate record for dataset={ds!r} split={s} method={m!r}")
        out[ds][m][s] = r
    return out


def t_interval(values: Sequence[float], level: float = LEVEL) -> list[float] | None:
    """Student-t interval of the mean over splits (n ≥ 2; the splits are the replicates)."""
    x = np.asarray(values, float)
    if x.size < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return [float(x.mean() - half), float(x.mean() + half)]


def _win_rate(rl: dict[int, Any], ref: dict[int, Any]) -> dict[str, Any]:
    """Paired over splits: RL wins where its rmse is lower; ties count half; NaN pairs dropped."""
    wins = ties = losses = 0
    for s in sorted(set(rl) & set(ref)):
        a, b = _num(rl[s]), _num(ref[s])
        if a is None or b is None:
            continue
        wins, ties, losses = wins + (a < b), ties + (a == b), losses + (a > b)
    n = wins + ties + losses
    return {"win_rate": (wins + 0.5 * ties) / n if n else None, "n_pairs": n,
            "wins": wins, "ties": ties, "losses": losses}


# --- per dataset ---------------------------------------------------------------------------


def dataset_summary(records: Iterable[Record], reference: str = "CE",
                    rl_methods: Sequence[str] | None = RL_METHODS) -> dict[str, Any]:
    """Per dataset and method: mean test RMSE over splits with its 95 % CI, and the paired win
    rate of each RL method over `reference` (rl_methods=None: every other method)."""
    idx = _index(records)
    out: dict[str, Any] = {"reference": reference, "level": LEVEL, "methods": [], "datasets": {}}
    all_methods: list[str] = []
    for ds in sorted(idx):
        methods = order_methods(idx[ds])
        all_methods += methods
        rows: dict[str, Any] = {}
        for m in methods:
            runs = idx[ds][m]
            ok = {s: _num(r.get("rmse")) for s, r in runs.items()}
            vals = [v for v in ok.values() if v is not None]
            row: dict[str, Any] = {"mean": float(np.mean(vals)) if vals else None, "ci": None,
                                   "ci_kind": None, "n": len(vals), "n_failed": len(runs) - len(vals)}
            if len(vals) >= 2:
                row["ci"], row["ci_kind"] = t_interval(vals), "t-over-splits"
            elif len(vals) == 1:  # one split: the only interval we have is the run's own
                only = next(runs[s] for s, v in ok.items() if v is not None)
                run_ci = only.get("rmse_ci")
                row["ci"] = _ci(*run_ci) if run_ci is not None and len(run_ci) == 2 else None
                row["ci_kind"] = "test-bootstrap" if row["ci"] is not None else None
            rows[m] = row
        wins: dict[str, Any] = {}
        if reference in idx[ds]:
            cands = [m for m in methods if m != reference] if rl_methods is None else \
                [m for m in rl_methods if m in idx[ds] and m != reference]
            ref = {s: r.get("rmse") for s, r in idx[ds][reference].items()}
            for m in cands:
                wins[m] = {"vs": reference,
                           **_win_rate({s: r.get("rmse") for s, r in idx[ds][m].items()}, ref)}
        out["datasets"][ds] = {"methods": rows, "win_rate": wins}
    out["methods"] = order_methods(all_methods)
    return out


# --- across datasets -----------------------------------------------------------------------


def normalised_scores(records: Iterable[Record]) -> list[Record]:
    """score = rmse / scale (lower is better, 1.0 = no better than the train mean), so datasets
    in different units can be pooled. None where the run failed or scale is unusable."""
    out = []
    for r in records:
        rmse, scale = _num(r.get("rmse")), _num(r.get("scale"))
        score = rmse / scale if rmse is not None and scale is not None and scale > 0 else None
        out.append({"dataset": str(r["dataset"]), "split": int(r["split"]),
                    "method": str(r["method"]), "score": score})
    return out


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: robust to one bad split, yet less noisy than the median."""
    return stats.trim_mean(x, 0.25, axis=axis)


def _rng(seed: int, name: str) -> np.random.Generator:
    """Per-method stream: a method's CI must not depend on which other methods were listed."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _stratified(per_ds: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, N) resamples: splits drawn with replacement *within* each dataset, so every
    resample keeps each dataset's weight (Agarwal et al. 2021)."""
    return np.concatenate([x[rng.integers(0, x.size, (n_boot, x.size))] for x in per_ds], axis=1)


def _p_improve(xs: list[np.ndarray], ys: list[np.ndarray]) -> np.ndarray:
    """Mean over datasets of P(X < Y) over all run pairs, ties half (rliable's definition);
    leading axes broadcast, the last is runs."""
    ps = []
    for x, y in zip(xs, ys):
        a, b = x[..., :, None], y[..., None, :]
        ps.append(((a < b) + 0.5 * (a == b)).mean(axis=(-2, -1)))
    return np.mean(ps, axis=0)


def aggregate_iqm(records: Iterable[Record], methods: Sequence[str] | None = None,
                  n_boot: int = 2000, seed: int = 0, reference: str = "CE",
                  rl_methods: Sequence[str] | None = RL_METHODS) -> dict[str, Any]:
    """IQM and mean of normalised scores over all (dataset, split) runs per method, with 95 %
    stratified-bootstrap CIs, and P(RL scores lower than `reference`) over datasets."""
    records = list(records)
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    failed: dict[str, int] = defaultdict(int)
    for r in normalised_scores(records):
        if r["score"] is None:
            failed[r["method"]] += 1
        else:
            by[r["method"]][r["dataset"]].append(r["score"])
    _index(records)  # duplicates raise here too
    present = order_methods([str(r["method"]) for r in records])
    methods = present if methods is None else list(methods)
    q = [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2]
    out: dict[str, Any] = {"level": LEVEL, "n_boot": n_boot, "seed": seed, "reference": reference,
                           "methods": {}, "prob_improvement": {}}
    for m in methods:
        per_ds = [np.asarray(v, float) for _, v in sorted(by[m].items())]
        row: dict[str, Any] = {"iqm": None, "iqm_ci": None, "mean": None, "mean_ci": None,
                               "n_runs": int(sum(x.size for x in per_ds)),
                               "n_failed": failed[m], "n_datasets": len(per_ds)}
        if per_ds:
            allx = np.concatenate(per_ds)
            boot = _stratified(per_ds, n_boot, _rng(seed, m))
            row["iqm"], row["mean"] = float(iqm(allx)), float(allx.mean())
            row["iqm_ci"] = [float(v) for v in np.percentile(iqm(boot, axis=1), q)]
            row["mean_ci"] = [float(v) for v in np.percentile(boot.mean(axis=1), q)]
        out["methods"][m] = row
    cands = [m for m in (present if rl_methods is None else rl_methods) if m != reference]
    for m in cands:
        common = sorted(set(by[m]) & set(by[reference]))
        if not common:
            continue
        xs = [np.asarray(by[m][d], float) for d in common]
        ys = [np.asarray(by[reference][d], float) for d in common]
        rng = _rng(seed, f"{m}>{reference}")
        xb = [x[rng.integers(0, x.size, (n_boot, x.size))] for x in xs]
        yb = [y[rng.integers(0, y.size, (n_boot, y.size))] for y in ys]
        out["prob_improvement"][m] = {
            "vs": reference, "p": float(_p_improve(xs, ys)),
            "ci": [float(v) for v in np.percentile(_p_improve(xb, yb), q)],
            "n_datasets": len(common)}
    return out


def sampling_curve_summary(curve_records: Iterable[Record]) -> dict[str, Any]:
    """RMSE vs number of samples K per dataset and method: parallel lists over sorted K (JSON
    object keys would turn the ints into strings)."""
    acc: dict[str, dict[str, dict[int, list[float | None]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for r in curve_records:
        acc[str(r["dataset"])][str(r["method"])][int(r["k"])].append(_num(r.get("rmse")))
    out: dict[str, Any] = {"level": LEVEL, "datasets": {}}
    for ds in sorted(acc):
        out["datasets"][ds] = {}
        for m in order_methods(acc[ds]):
            ks = sorted(acc[ds][m])
            vals = [[v for v in acc[ds][m][k] if v is not None] for k in ks]
            out["datasets"][ds][m] = {
                "k": ks, "mean": [float(np.mean(v)) if v else None for v in vals],
                "ci": [t_interval(v) for v in vals], "n": [len(v) for v in vals],
                "n_failed": [len(acc[ds][m][k]) - len(v) for k, v in zip(ks, vals)]}
    return out


# --- text ----------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 4) -> str:
    """About `digits` significant figures without scientific notation (RMSE units vary)."""
    if x is None:
        return "—"
    a = abs(x)
    if a == 0 or a >= 10 ** (digits - 1):
        return f"{x:.0f}" if a < 1e9 else f"{x:.3g}"
    if a < 1e-6:
        return f"{x:.3g}"
    return f"{x:.{max(0, digits - 1 - math.floor(math.log10(a)))}f}"


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return "—" if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_tables(summary: dict[str, Any], agg: dict[str, Any] | None = None) -> str:
    """Plain-text tables for the console: one per dataset, then the aggregate (if given)."""
    ref = summary.get("reference", "CE")
    parts = []
    for ds, d in summary["datasets"].items():
        rows = []
        for m, r in d["methods"].items():
            w = d["win_rate"].get(m)
            win = "—" if w is None or w["win_rate"] is None else f"{w['win_rate']:.2f} ({w['n_pairs']})"
            rows.append([m, fmt(r["mean"]), _fmt_ci(r["ci"]), r["ci_kind"] or "—",
                         str(r["n"]), str(r["n_failed"]), win])
        head = ["method", "mean RMSE", "95% CI", "CI kind", "n", "failed", f"win vs {ref} (pairs)"]
        parts.append(f"== {ds} ==\n" + _table(head, rows))
    if agg is not None:
        rows = [[m, fmt(r["iqm"]), _fmt_ci(r["iqm_ci"]), fmt(r["mean"]), _fmt_ci(r["mean_ci"]),
                 str(r["n_runs"]), str(r["n_failed"]), str(r["n_datasets"])]
                for m, r in agg["methods"].items()]
        head = ["method", "IQM score", "95% CI", "mean score", "95% CI", "runs", "failed", "datasets"]
        parts.append("== aggregate: RMSE / RMSE(train mean), lower is better, "
                     f"stratified bootstrap n={agg['n_boot']} ==\n" + _table(head, rows))
        if agg["prob_improvement"]:
            rows = [[m, f"{p['p']:.3f}", _fmt_ci(p["ci"]), str(p["n_datasets"])]
                    for m, p in agg["prob_improvement"].items()]
            parts.append(f"== P(score < {agg['reference']}) ==\n"
                         + _table(["method", "P", "95% CI", "datasets"], rows))
    return "\n\n".join(parts) + "\n"


def markdown_table(summary: dict[str, Any]) -> str:
    """One row per dataset, one column per method, cells "mean [lo, hi]" (for README notes)."""
    methods = summary["methods"]
    lines = ["| dataset | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for ds, d in summary["datasets"].items():
        cells = []
        for m in methods:
            r = d["methods"].get(m)
            if r is None or r["mean"] is None:
                cells.append("failed" if r is not None and r["n_failed"] else "—")
            else:
                cells.append(f"{fmt(r['mean'])} {_fmt_ci(r['ci'])}")
        lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- plots (Agg canvas on a bare Figure: no pyplot global state) ---------------------------


def _grid(n: int, w: float = 4.5, h: float = 3.2) -> tuple[Figure, list[Any]]:
    cols = min(max(n, 1), 3)
    rows = math.ceil(max(n, 1) / cols)
    fig = Figure(figsize=(w * cols, h * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    if n == 0:
        axes[0].text(0.5, 0.5, "no data", ha="center")
    for ax in axes[max(n, 1):]:
        ax.set_visible(False)
    return fig, axes


def _save(fig: Figure, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return str(path)


def _hbars(ax: Any, names: list[str], mids: list[float | None], cis: list[Any]) -> None:
    """Points with CI whiskers, top to bottom in the given order; missing values skipped."""
    keep = [i for i, v in enumerate(mids) if v is not None]
    y = [len(names) - 1 - i for i in keep]
    x = [mids[i] for i in keep]
    err = [[max(0.0, mids[i] - cis[i][0]) if cis[i] else 0.0 for i in keep],
           [max(0.0, cis[i][1] - mids[i]) if cis[i] else 0.0 for i in keep]]
    ax.errorbar(x, y, xerr=err, fmt="o", capsize=3)
    ax.set_yticks(range(len(names)), names[::-1])
    ax.grid(axis="x", alpha=0.3)


def plot_dataset_rmse(summary: dict[str, Any], path: str | Path) -> str:
    """Mean test RMSE ± 95 % CI per method, one panel per dataset (dashed: the reference)."""
    dss = list(summary["datasets"])
    fig, axes = _grid(len(dss))
    for ax, ds in zip(axes, dss):
        rows = summary["datasets"][ds]["methods"]
        names = list(rows)
        _hbars(ax, names, [rows[m]["mean"] for m in names], [rows[m]["ci"] for m in names])
        ref = rows.get(summary.get("reference", "CE"))
        if ref is not None and ref["mean"] is not None:
            ax.axvline(ref["mean"], ls="--", c="grey", lw=1)
        ax.set_title(ds)
        ax.set_xlabel("test RMSE (lower is better)")
    return _save(fig, path)


def plot_aggregate(agg: dict[str, Any], path: str | Path) -> str:
    """IQM and mean of normalised scores ± 95 % stratified-bootstrap CI per method."""
    fig, axes = _grid(2)
    names = list(agg["methods"])
    for ax, key in zip(axes, ("iqm", "mean")):
        rows = agg["methods"]
        _hbars(ax, names, [rows[m][key] for m in names], [rows[m][f"{key}_ci"] for m in names])
        ax.axvline(1.0, ls=":", c="grey", lw=1)  # = predicting the train mean
        ax.set_title(f"{key.upper() if key == 'iqm' else key} of RMSE / RMSE(mean)")
        ax.set_xlabel("normalised score (lower is better)")
    return _save(fig, path)


def plot_sampling_curves(curve_summary: dict[str, Any], path: str | Path) -> str:
    """Test RMSE vs samples per input K (log2 axis), one line per method, one panel per dataset."""
    dss = list(curve_summary["datasets"])
    fig, axes = _grid(len(dss))
    for ax, ds in zip(axes, dss):
        for m, c in curve_summary["datasets"][ds].items():
            pts = [(k, v) for k, v in zip(c["k"], c["mean"]) if v is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m)
        ax.set_xscale("log", base=2)
        ks = sorted({k for c in curve_summary["datasets"][ds].values() for k in c["k"]})
        if ks:
            ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(ds)
        ax.set_xlabel("K (samples per input)")
        ax.set_ylabel("test RMSE")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return _save(fig, path)

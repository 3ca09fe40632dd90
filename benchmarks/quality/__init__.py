"""The quality benchmark (`rlreg bench quality`): every method on the presets' datasets and splits,
scored with CIs. presets.py: datasets, methods, budgets; methods.py: one (dataset, split) run;
stats.py: CIs, win rates, IQM, tables and plots; runner.py: orchestration and the records file;
results.py: the JSON and plots from the runs done so far; tuning.py: the paper preset's CE search;
diagnostics.py: per-step RL diagnostics."""
from benchmarks.quality.runner import run_quality

__all__ = ["run_quality"]

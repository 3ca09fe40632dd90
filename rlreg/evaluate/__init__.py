"""Evaluation: K samples per input drawn through the rollout workers (sampling.py), aggregated
(aggregate.py), scored with bootstrap CIs, CRPS and interval coverage (metrics.py), reported as
tables and JSON (report.py) and plots (plots.py). Import the modules themselves: this package
loads nothing on its own, so reading its config (config.py) stays cheap."""

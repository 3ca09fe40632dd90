"""The regression-head baseline: the same LM with an MSE head learns the target (beats the mean)."""
from pathlib import Path

import numpy as np

from rlreg.config import load_config


def test_regression_head_beats_predicting_the_mean(tmp_path):
    from rlreg.evaluate.sampling import run_baselines
    from rlreg.train.task import prepare_task

    cfg = load_config(None, ["data.input=vector", "data.max_rows=300", "model.layers=1", "model.encoder_hidden=64",
                             "sft.steps=60", "sft.eval_every=20", "eval.baselines=[reghead,ridge]",
                             f"run_dir={tmp_path}"])
    task = prepare_task(cfg, Path(tmp_path))
    result = run_baselines(task, cfg)
    assert set(result) == {"reghead", "ridge"}
    test = result["reghead"]["test"]
    mean_rmse = float(np.sqrt(np.mean((task.y["test"] - task.y["train"].mean()) ** 2)))
    assert test["rmse"] < 0.95 * mean_rmse
    assert test["r2"] > 0.1

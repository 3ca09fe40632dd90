"""`rlreg eval RUN_DIR` on one tiny finished run: the checkpoint reloads with its saved scaler and
gives the greedy predictions the trained model gave; eval writes eval_<split>.json and plots and
leaves metrics.json alone; a directory that is not a finished run is a clear error (exit 2)."""
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlreg.cli import main
from rlreg.errors import ConfigError

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def run(tiny_cfg, ray_session, tmp_path_factory):
    """One supervised run (20 steps) — the only pipeline this module runs."""
    from rlreg.train.pipeline import run_supervised

    cfg = copy.deepcopy(tiny_cfg)
    cfg.run_dir = str(tmp_path_factory.mktemp("eval_run"))
    cfg.data.max_rows, cfg.sft.steps, cfg.sft.eval_every, cfg.eval.samples = 150, 20, 10, 4
    payload = run_supervised(cfg, "sft")
    return Path(cfg.run_dir), payload


def test_saved_scaler_is_used_not_refitted(tiny_cfg, tiny_task, tmp_path):
    from rlreg.rundir import ModelFiles
    from rlreg.train.task import prepare_task

    saved = json.loads(Path(tiny_task.model_dir, ModelFiles.TASK).read_text())["scaler"]
    assert prepare_task(tiny_cfg, tmp_path, model_dir=tiny_task.model_dir).scaler.state_dict() == saved
    # Change the saved state: a refit would not see the change, the loader must.
    model_dir = shutil.copytree(tiny_task.model_dir, tmp_path / "ckpt")
    info = json.loads((model_dir / ModelFiles.TASK).read_text())
    info["scaler"]["mean"] += 1.0
    (model_dir / ModelFiles.TASK).write_text(json.dumps(info))
    task = prepare_task(tiny_cfg, tmp_path, model_dir=model_dir)
    assert task.scaler.state_dict() == info["scaler"]
    assert not (tmp_path / "model").exists()  # a given checkpoint: no model is built
    other = copy.deepcopy(tiny_cfg)
    other.numbers.scaler = "quantile"
    with pytest.raises(ConfigError, match="numbers.scaler='quantile' but .* holds the 'zscore_minmax' scaler"):
        prepare_task(other, tmp_path, model_dir=model_dir)


def test_checkpoint_reloads_with_the_same_greedy_predictions(run, tmp_path):
    """The supervised stage kept the model with the best greedy validation RMSE, computed by the
    learner in memory; the saved checkpoint, loaded by a fresh engine through both the eval path
    (prepare_task) and the predict path (task.json + rows from a file), must reproduce it."""
    from rlreg.actors.rollout import RolloutGroup
    from rlreg.config import load_config
    from rlreg.evaluate.sampling import sample_values
    from rlreg.data.rows import read_rows
    from rlreg.model.checkpoint import load_checkpoint
    from rlreg.train.task import PREDICT, prepare_task, task_for_rows

    run_dir, _ = run
    logged = [json.loads(line) for line in (run_dir / "sft_log.jsonl").read_text().splitlines()]
    best = min(entry["greedy_rmse"] for entry in logged if entry["split"] == "val")
    cfg = load_config(run_dir / "config.yaml")
    task = prepare_task(cfg, run_dir, model_dir=run_dir / "checkpoint")
    ds = task.dataset
    path = tmp_path / "val.csv"
    X = ds.features[ds.splits.val]
    path.write_text(",".join(ds.source_columns) + "\n" + "".join(",".join(map(repr, map(float, r))) + "\n" for r in X))
    rollout = RolloutGroup(run_dir / "checkpoint", cfg.engine, cfg.model.max_positions, cfg.ray)
    try:
        via_eval, _ = sample_values(rollout, task, "val", 1, 0.0, 64)
        new_rows = task_for_rows(load_checkpoint(run_dir / "checkpoint"), read_rows(path))
        via_predict, _ = sample_values(rollout, new_rows, PREDICT, 1, 0.0, 64)
    finally:
        rollout.shutdown()
    np.testing.assert_array_equal(via_eval, via_predict)
    rmse = float(np.sqrt(np.mean((via_eval[:, 0] - task.y["val"]) ** 2)))
    assert rmse == pytest.approx(best, rel=1e-6)


def test_eval_writes_its_own_json_and_plots(run, capsys):
    run_dir, payload = run
    before = (run_dir / "metrics.json").read_bytes()
    assert main(["eval", str(run_dir), "--samples", "4", "--baselines", "--alpha", "0.2", "--alpha", "0.5"]) == 0
    result = json.loads((run_dir / "eval_test.json").read_text())
    # 0.1 always, then each --alpha asked; calibrated from the supervised run's validation scores.
    assert list(result["model"]["intervals"]) == ["0.1", "0.2", "0.5"]
    for key, row in result["model"]["intervals"].items():
        assert row["nominal"] == pytest.approx(1 - float(key))
        assert 0.0 <= row["raw"]["coverage"] <= 1.0 and row["calibrated"]["width"] > 0
    widths = [row["calibrated"]["width"] for row in result["model"]["intervals"].values()]
    assert widths == sorted(widths, reverse=True)  # a lower level never gives a wider interval
    assert result["split"] == "test" and result["aggregation_chosen_on"] == "val"
    assert result["model"]["n_rows"] == payload["test"]["n_rows"] and result["model"]["samples_per_row"] == 4
    # Same rows as the training run's report: the deterministic baselines score identically.
    for name in ("hgb", "ridge"):
        assert result["baselines"][name]["rmse"] == pytest.approx(payload["baselines"][name]["test"]["rmse"])
    assert all(Path(p).stat().st_size > 1000 for p in result["plots"]) and len(result["plots"]) == 2
    assert (run_dir / "metrics.json").read_bytes() == before
    out = capsys.readouterr().out
    assert "HGB" in out and "RIDGE" in out and "eval_test.json" in out


def test_eval_val_split_with_given_aggregation(run):
    run_dir, payload = run
    assert main(["eval", str(run_dir), "--split", "val", "--samples", "2", "eval.aggregation=median",
                 "eval.plots=false"]) == 0
    result = json.loads((run_dir / "eval_val.json").read_text())
    assert (result["aggregation"], result["aggregation_chosen_on"]) == ("median", "config")
    assert result["model"]["n_rows"] == payload["val"]["n_rows"] and result["model"]["samples_per_row"] == 2
    assert "plots" not in result and not (run_dir / "eval_val_parity.png").exists()


def test_eval_errors_name_what_is_missing(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert f"{tmp_path}: no config.yaml" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "checkpoint").mkdir()
    assert main(["eval", str(tmp_path)]) == 2
    assert "no finished checkpoint" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--split", "train", "--baselines"]) == 2
    assert "--split val or --split test" in capsys.readouterr().err
    # The real command line: exit status 2 and one line, no traceback.
    out = subprocess.run([sys.executable, "-m", "rlreg", "eval", str(tmp_path / "nope")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr

"""`rlreg compare`: one real tiny `rlreg sft` run (run "a") and a copy of it made to look like a
`rlreg train` run with one changed setting (run "b"); the table holds both runs' numbers, the
settings section exactly the changed key, the PNG is a real image, the JSON round-trips, and bad
input is a clear error (exit 2) naming the directory. The settings logic is also tested alone."""
import copy
import json
import shutil
from pathlib import Path

import pytest

from rlreg.cli import main
from rlreg.evaluate.compare import differing_settings, flatten, read_log, setting_text
from rlreg.evaluate.report import format_cell

B_TEST_RMSE, B_TEST_CI, B_VAL_RMSE = 12.3456, [11.1111, 13.3333], 23.4567
B_RL_LR = 3e-05


@pytest.fixture(scope="module")
def runs(tiny_cfg, ray_session, tmp_path_factory):
    """(a, b): a real supervised run (20 steps) and its copy b with rl.lr changed, new metrics
    (with a "before" block, as `rlreg train` writes) and an RL log written by the real logger."""
    from rlreg.config import load_config
    from rlreg.configlib import write_yaml
    from rlreg.train.logger import RunLogger
    from rlreg.train.pipeline import run_supervised

    root = tmp_path_factory.mktemp("compare")
    cfg = copy.deepcopy(tiny_cfg)
    cfg.run_dir = str(root / "a")
    cfg.data.max_rows, cfg.sft.steps, cfg.sft.eval_every, cfg.eval.samples = 150, 20, 10, 4
    run_supervised(cfg, "sft")
    a, b = root / "a", root / "b"
    shutil.copytree(a, b)
    assert load_config(a / "config.yaml").rl.lr != B_RL_LR  # else the changed key would not differ
    write_yaml(load_config(a / "config.yaml", [f"rl.lr={setting_text(B_RL_LR)}", f"run_dir={b}"]), b / "config.yaml")
    metrics = json.loads((a / "metrics.json").read_text())
    metrics["before"] = {"val": copy.deepcopy(metrics["val"]), "test": copy.deepcopy(metrics["test"])}
    metrics.update(stage="rl", algorithm="remax")
    metrics["test"].update(rmse=B_TEST_RMSE, rmse_ci=B_TEST_CI)
    metrics["val"]["rmse"] = B_VAL_RMSE
    (b / "metrics.json").write_text(json.dumps(metrics))
    logger = RunLogger(b, "rl")
    for step, reward in enumerate([-2.0, -1.5, float("nan"), -0.5], start=1):
        logger.log(step, {"reward_mean": reward, **({"val_rmse": 50.0 - step} if step % 2 == 0 else {})}, "rl")
    logger.close()
    return a, b


def _line_of(text: str, run: str, model: str) -> str:
    [line] = [line for line in text.splitlines() if line.split()[:2] == [run, model]]
    return line


@pytest.mark.engine
def test_table_settings_json_and_png(runs, tmp_path, capsys):
    a, b = runs
    out_dir = tmp_path / "out"
    assert main(["compare", str(a), str(b), "--output", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    a_metrics = json.loads((a / "metrics.json").read_text())

    # table: a's final model, b's supervised model (a's numbers) and b's final model (the new ones)
    line_a = _line_of(printed, "a", "CE")
    for value in (a_metrics["test"]["rmse"], a_metrics["test"]["mae"], a_metrics["val"]["rmse"]):
        assert format_cell(value) in line_a
    assert format_cell(a_metrics["test"]["rmse_ci"]) in line_a
    assert format_cell(a_metrics["test"]["rmse"]) in _line_of(printed, "b", "CE")
    line_b = _line_of(printed, "b", "CE+REMAX")
    for value in (B_TEST_RMSE, B_TEST_CI, B_VAL_RMSE):
        assert format_cell(value) in line_b

    # settings: exactly the changed key, both values; run_dir differs too but is not shown
    settings = printed.split("settings that differ")[1].splitlines()[1:]
    rows = [line for line in settings[2:] if line.strip() and not line.startswith("written:")]
    assert len(rows) == 1 and rows[0].split() == ["rl.lr", setting_text(load_lr(a)), "3.0e-05"]
    assert settings[0].split() == ["setting", "a", "b"]

    # files: the JSON holds what was printed plus the plot's path; the PNG is a real image
    saved = json.loads((out_dir / "compare.json").read_text())
    assert saved["settings"] == [{"key": "rl.lr", "values": {"a": load_lr(a), "b": B_RL_LR}}]
    assert [(row["run"], row["model"], row["test_rmse"]) for row in saved["metrics"]] == [
        ("a", "CE", a_metrics["test"]["rmse"]), ("b", "CE", a_metrics["test"]["rmse"]),
        ("b", "CE+REMAX", B_TEST_RMSE)]
    assert saved["metrics"][2]["test_rmse_ci"] == B_TEST_CI and saved["metrics"][2]["val_rmse"] == B_VAL_RMSE
    assert [run["steps"]["rl"] for run in saved["runs"]] == [0, 4]
    assert saved["plot"] == str(out_dir / "compare.png")
    png = Path(saved["plot"])
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    height, width, _ = imread(png).shape
    assert width > height > 300  # two panels side by side
    assert sorted(p.name for p in out_dir.iterdir()) == ["compare.json", "compare.png"]  # no temp files left


def load_lr(run_dir: Path) -> float:
    from rlreg.config import load_config

    return load_config(run_dir / "config.yaml").rl.lr


@pytest.mark.engine
def test_json_round_trips(runs, tmp_path, capsys):
    from rlreg.evaluate.compare import load_runs, summarize
    from rlreg.evaluate.report import to_json_safe

    a, b = runs
    assert main(["compare", str(a), str(b), "--output", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved.pop("plot") == str(tmp_path / "compare.png")
    assert saved == to_json_safe(summarize(load_runs([a, b])))


@pytest.mark.engine
def test_curves_read_the_real_logs(runs):
    from rlreg.evaluate.compare import curves, load_runs, plot_curves

    a, b = runs
    run_a, run_b = load_runs([a, b])
    logged = [json.loads(line) for line in (a / "sft_log.jsonl").read_text().splitlines()]
    val = [(entry["step"] + 1, entry["greedy_rmse"]) for entry in logged if entry["split"] == "val"]
    assert [x for x, _ in val] == [10, 20]
    assert curves(run_a) == {"sft_val_rmse": val, "rl_val_rmse": [], "reward_mean": []}
    lines_b = curves(run_b)
    assert lines_b["rl_val_rmse"] == [(22, 48.0), (24, 46.0)]  # after b's 20 supervised steps
    rewards = lines_b["reward_mean"]
    assert [x for x, _ in rewards] == [1, 2, 3, 4] and rewards[2][1] != rewards[2][1]  # logged NaN stays a gap
    _, reward_axes = plot_curves([run_a, run_b]).axes
    handles, labels = reward_axes.get_legend_handles_labels()
    assert labels == ["a: no RL log", "b"]
    assert [len(handle.get_xdata()) for handle in handles] == [0, 4]


@pytest.mark.engine
def test_one_run_says_nothing_differs(runs, tmp_path, capsys):
    a, _ = runs
    assert main(["compare", str(a), "--output", str(tmp_path)]) == 0
    assert "settings: one run, nothing to compare" in capsys.readouterr().out
    assert json.loads((tmp_path / "compare.json").read_text())["settings"] == []


@pytest.mark.engine
def test_same_directory_names_are_labelled_by_path(runs, tmp_path, capsys):
    a, _ = runs
    other = shutil.copytree(a, tmp_path / "elsewhere" / "a")
    assert main(["compare", str(a), str(other), "--output", str(tmp_path)]) == 0
    labels = [run["label"] for run in json.loads((tmp_path / "compare.json").read_text())["runs"]]
    assert labels == [str(a), str(other)]


@pytest.mark.engine
def test_bad_run_among_good_ones_is_named(runs, tmp_path, capsys):
    a, _ = runs
    unfinished = shutil.copytree(a, tmp_path / "unfinished")
    (unfinished / "metrics.json").unlink()
    for argv, message in (([str(a), str(unfinished)], f"run directory {unfinished}: no metrics.json"),
                          ([str(a), str(a)], f"run directory {a} is given twice")):
        assert main(["compare", *argv, "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rlreg: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written for a failed comparison


@pytest.mark.parametrize("case", ["missing", "not_a_run", "unfinished", "output_is_a_file"])
def test_bad_input_is_a_clear_error(case, tiny_cfg, tmp_path, capsys):
    from rlreg.configlib import write_yaml

    run_dir, output = tmp_path / "run", tmp_path / "out"
    if case != "missing":
        run_dir.mkdir()
    if case in ("unfinished", "output_is_a_file"):
        write_yaml(tiny_cfg, run_dir / "config.yaml")  # what a started run holds before metrics.json
    if case == "output_is_a_file":
        output.write_text("")
    expected = {"missing": f"run directory {run_dir} does not exist",
                "not_a_run": f"run directory {run_dir}: no config.yaml there",
                "unfinished": f"run directory {run_dir}: no metrics.json there (the run has not finished",
                "output_is_a_file": f"--output {output} is a file"}[case]
    assert main(["compare", str(run_dir), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlreg: error: ") and expected in err


def test_differing_settings_plain_dicts():
    a = {"run_dir": "runs/a", "rl": {"lr": 1e-4, "steps": 10}, "eval": {"baselines": ["hgb"]}, "tune": {"space": {}}}
    b = {"run_dir": "runs/b", "rl": {"lr": 3e-5, "steps": 10}, "eval": {"baselines": ["hgb"]},
         "tune": {"space": {"rl.lr": {"grid": [1, 2]}}}, "sft": {"init_from": None}}
    assert flatten(b)["tune.space.rl.lr.grid"] == [1, 2] and flatten(a)["tune.space"] == {}
    assert differing_settings({"a": a, "b": b}) == [
        {"key": "rl.lr", "values": {"a": 1e-4, "b": 3e-5}},
        {"key": "tune.space", "values": {"a": {}}},  # b has no such leaf: it has tune.space.rl.lr.grid
        {"key": "tune.space.rl.lr.grid", "values": {"b": [1, 2]}},
        {"key": "sft.init_from", "values": {"b": None}},  # absent in a, null in b: still a difference
    ]
    assert differing_settings({"a": a, "a2": copy.deepcopy(a) | {"run_dir": "elsewhere"}}) == []
    assert differing_settings({"a": a}) == []


def test_read_log_skips_a_line_cut_short(tmp_path):
    log = tmp_path / "rl_log.jsonl"
    log.write_text('{"step": 1, "split": "rl", "reward_mean": -1.0}\n{"step": 2, "split": "rl", "reward_mean": -0.5}\n'
                   '{"step": 3, "split": "rl", "rew')
    assert [record["step"] for record in read_log(log)] == [1, 2]
    assert read_log(tmp_path / "absent.jsonl") == []

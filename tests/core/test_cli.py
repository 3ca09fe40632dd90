import subprocess
import sys


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "rlreg", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_working_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("data", "train"):
        assert command in out.stdout


def test_data_show_concrete_reports_1030_rows():
    out = run_cli("data", "show", "uci:concrete")
    assert out.returncode == 0, out.stderr
    assert "1030 rows" in out.stdout
    assert "official" in out.stdout


def test_unknown_key_exits_2_with_named_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  sorce: uci:concrete\n")
    out = run_cli("train", str(cfg))
    assert out.returncode == 2
    assert "unknown config key 'data.sorce'" in out.stderr
    assert str(cfg) in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_source_in_data_show_is_clear():
    out = run_cli("data", "show", "nosuch:thing")
    assert out.returncode == 2
    assert "nosuch" in out.stderr and "Traceback" not in out.stderr

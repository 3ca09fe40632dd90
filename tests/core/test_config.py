import pytest

from rlreg.config import RunConfig, load_config
from rlreg.configlib import apply_overrides, parse_override
from rlreg.errors import ConfigError
from conftest import REPO


def test_defaults_validate():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig)
    assert cfg.data.source == "sklearn:diabetes"


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  layers: 3\ndata:\n  source: uci:concrete\n")
    cfg = load_config(path, ["model.hidden=128", "model.heads=4", "learner_free_key_absent=1"][:2] + ["run_dir=x"])
    assert (cfg.model.layers, cfg.model.hidden, cfg.model.heads) == (3, 128, 4)
    assert cfg.data.source == "uci:concrete"
    assert cfg.run_dir == "x"


def test_unknown_key_is_named_with_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  layerz: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*unknown config key 'model\.layerz'.*did you mean 'model\.layers'"):
        load_config(path)


def test_unknown_section_from_cli():
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        load_config(None, ["modle.layers=2"])


def test_mistyped_value_is_named():
    with pytest.raises(ConfigError, match="model.layers: expected an integer, got 'two'"):
        load_config(None, ["model.layers=two"])
    with pytest.raises(ConfigError, match="engine.enable_prefix_caching: expected true or false"):
        load_config(None, ["engine.enable_prefix_caching=3"])


def test_out_of_range_value_is_named():
    with pytest.raises(ConfigError, match="model.hidden / model.heads = 16"):
        load_config(None, ["model.hidden=32", "model.heads=2"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("model.layers")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_int_widens_to_float_but_not_bool():
    cfg = load_config(None, ["eval.temperature=1"])
    assert cfg.eval.temperature == 1.0 and isinstance(cfg.eval.temperature, float)
    with pytest.raises(ConfigError):
        load_config(None, ["eval.temperature=true"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_loading_every_example_config_imports_no_engine_or_ray():
    """Config schema modules import neither torch nor Ray: loading a config (every example) in a
    fresh interpreter leaves torch, vllm, deepspeed and ray unimported."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    examples = sorted(str(p) for p in (REPO / "examples").glob("*.yaml"))
    assert examples
    code = ("import json, sys\nfrom rlreg.config import load_config\n"
            "for path in sys.argv[1:]:\n    load_config(path)\n"
            "print(json.dumps([m for m in ('torch', 'vllm', 'deepspeed', 'ray') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code, *examples], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

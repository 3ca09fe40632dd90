"""Prompt encoding works for every number format (ieee/p10 specs store no `length` key)."""
from pathlib import Path

from rlreg.config import load_config
from rlreg.train.task import prepare_task


def test_ieee_task_prepares_and_encodes_prompts(tmp_path):
    cfg = load_config(None, ["data.max_rows=60", "model.layers=1", "model.prompt_vocab=200",
                             "numbers.tokenizer=ieee", "numbers.scaler=identity", f"run_dir={tmp_path}"])
    task = prepare_task(cfg, Path(tmp_path))
    assert task.codec.number_length == task.number_tokenizer.length == 2 + 2 + 4
    assert all(len(p) > 2 for p in task.prompts["train"])

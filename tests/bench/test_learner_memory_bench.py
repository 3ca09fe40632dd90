"""`rlreg bench learner_memory` measures each variant in a fresh process (benchmarks/learner_memory.py);
the whole benchmark starts DeepSpeed five times (≈ 2 min in smoke mode), so like `sync` it is left to
`rlreg bench learner_memory --quick` by hand, and this runs one variant's child at tiny size."""
import json
import math
import shutil

import pytest


@pytest.mark.engine
def test_one_variant_measures_a_real_learner_step(tiny_task, tmp_path):
    from benchmarks.learner_memory import VARIANTS, _run_child

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_task.model_dir, model_dir)
    (model_dir / "bench_prompts.json").write_text(json.dumps([list(map(int, p)) for p in tiny_task.prompts["train"]]))
    variant = {**VARIANTS["micro_checkpointing"], "micro_batch_size": 3}
    got = _run_child(model_dir, variant, inputs=2, group=2, steps=2)
    assert got["rows"] == 4 and got["passes"] == 2  # 4 rows at 3 per pass
    assert len(got["seconds"]) == len(got["peak_mb"]) == 2 and min(got["seconds"]) > 0
    assert all(peak >= base > 100 for peak, base in zip(got["peak_mb"], got["base_mb"]))  # MB, a whole process
    assert all(math.isfinite(loss) for loss in got["loss"]) and got["params"] > 0

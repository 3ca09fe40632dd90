"""Model directories: weights come from the learner; tokenizer, rlreg metadata and the fitted
scaler are copied from the directory the run started from, so every saved model is complete."""
from __future__ import annotations

import shutil
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "config.json", "generation_config.json")


def copy_model_extras(src: str | Path, dst: str | Path) -> None:
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and path.name not in WEIGHT_FILES and not path.name.endswith(".safetensors"):
            shutil.copy2(path, dst / path.name)
        elif path.is_dir() and not (dst / path.name).exists():
            # e.g. feature_encoder/: the learner writes the trained encoder there itself
            shutil.copytree(path, dst / path.name)


def atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place, so a crash never leaves half a model there.
    A crash between the two renames leaves `final` missing and `final.old` whole: put it back first."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            old.rename(final)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)

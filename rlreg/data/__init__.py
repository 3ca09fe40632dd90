"""Data sources (UCI folders, CSV/TSV/Parquet, SQL cardinality, scikit-learn built-ins), splits
and input rendering. Pure NumPy/pandas: nothing here imports torch or vllm."""
from rlreg.data.config import DataConfig, resolve_data_dir
from rlreg.data.dataset import Dataset, target_stats
from rlreg.data.render import (FeatureStats, feature_matrix, fit_feature_stats, prompt_corpus,
                               render_prompts)
from rlreg.data.show import show_dataset
from rlreg.data.sources import known_sources, load_dataset, register_source
from rlreg.data.splits import Splits

__all__ = [
    "DataConfig", "Dataset", "FeatureStats", "Splits", "feature_matrix", "fit_feature_stats",
    "known_sources", "load_dataset", "prompt_corpus", "register_source", "render_prompts",
    "resolve_data_dir", "show_dataset", "target_stats",
]

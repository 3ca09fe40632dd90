"""rlreg: decoding-based regression with language models, sharpened by RL on Ray."""

__version__ = "0.1.0"

__all__ = ["RLRegressor", "__version__"]


def __getattr__(name: str):
    # Lazy: `import rlreg` stays light; scikit-learn (and the pipeline behind it) load on first use.
    if name == "RLRegressor":
        from rlreg.estimator import RLRegressor

        return RLRegressor
    raise AttributeError(f"module 'rlreg' has no attribute {name!r}")

"""rlreg: decoding-based regression with language models, sharpened by RL on Ray."""

__version__ = "0.1.0"

"""What decoding-based regression is compared with, on the same splits: HistGradientBoosting and
Ridge (classical.py) and the same language model with an MSE regression head (reghead.py)."""

"""One module per CLI command: each reads its parsed arguments, builds what it needs from the
layers below, runs it and reports. Nothing below this package imports it."""

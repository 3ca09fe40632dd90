"""Performance benchmarks of rlreg against its peers (HF generate, TRL); run with `rlreg bench NAME`.
One module per benchmark, each with `run(BenchArgs) -> dict` and `REQUIRES` (extra modules)."""

"""Benchmarks: each script measures and prints what it measured; docs/BENCHMARKS.md records the numbers."""

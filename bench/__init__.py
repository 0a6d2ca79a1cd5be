"""Benchmarks: one script per benchmark (python -m bench.NAME)."""

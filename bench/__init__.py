"""Benchmarks: run with `python -m bench.<name>`; each appends its results to docs/benchmarks.md."""

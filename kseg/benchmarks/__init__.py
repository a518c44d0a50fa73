"""Throughput measurements behind BENCHMARKS.md (run by scripts/benchmark.py)."""

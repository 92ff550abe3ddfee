"""The benchmark suite: `python -m raystream.bench --help` (docs/benchmarks.md)."""

"""The benchmark suite: `python -m raystream.bench --help` (docs in README, "Performance")."""

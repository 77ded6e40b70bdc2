"""dbfoundation benchmark suite: `python -m benchmarks run [SCENARIO ...]` (see benchmarks/README.md)."""

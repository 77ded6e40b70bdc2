"""Entry point: `python -m benchmarks run ...` / `python -m benchmarks render`."""

from benchmarks.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""What one request costs, alone: wall time, event-loop CPU, whole-process CPU and aiosqlite thread hops.

Run: .venv/bin/python -m benchmarks.per_call [--requests 2000] [--impl NAME ...] [--variant insert ...]

One process, one task, requests one after another (no queueing, no lock waits), through the same adapters
as `python -m benchmarks run`, on a fresh SQLite file per implementation and variant. This isolates the
cost each layer adds per request, which is what the serialised section of a write is made of:

- wall us: elapsed time per request;
- loop CPU us: CPU of the event-loop thread (`time.thread_time`): Python on the request's path (ORM,
  SQLAlchemy, our layer, the driver adapter);
- process CPU us: all threads (`time.process_time`), i.e. loop + aiosqlite's thread + SQLite;
- hops: calls into aiosqlite's thread (`aiosqlite.Connection._execute`), each a queue put, a thread wake-up
  and a future resolved back on the loop. `sqlite3-raw` calls SQLite on the loop thread (0 hops).

Writes benchmarks/results/per_call.md (the table printed here, the command at its top); `python -m
benchmarks render` includes it in RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import shlex
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite

from benchmarks.adapters import IMPLS
from benchmarks.report import write_section
from benchmarks.scenarios import READ, OpSource
from benchmarks.targets import SQLiteTarget

RESULTS = Path(__file__).resolve().parent / "results" / "per_call.md"
DEFAULT_IMPLS = ("sqlite3-raw", "usual", "dbf-write", "dbf-write-core", "dbf-submit")
VARIANTS = {  # variant -> (workload, variant of that workload)
    "insert": ("ingest", "insert"),
    "check-then-insert": ("ingest", "check-then-insert"),
    "counter": ("counter", "increment"),
    "read": ("read-mostly", "point-read"),
}
WARMUP = 200


def count_hops() -> Callable[[], int]:
    """Patch aiosqlite to count calls into its thread; returns a reader of the running count."""
    calls = [0]
    real = aiosqlite.core.Connection._execute

    def counting(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(self, fn, *args, **kwargs)

    aiosqlite.core.Connection._execute = counting  # type: ignore[method-assign]
    return lambda: calls[0]


async def measure(impl: str, variant: str, requests: int, hops: Callable[[], int]) -> dict[str, float]:
    workload, workload_variant = VARIANTS[variant]
    target = SQLiteTarget(Path(tempfile.gettempdir()))
    target.setup(seed_rows=2000)
    try:
        adapter = IMPLS[impl].load()(target.url, workload, workload_variant, tasks=1)
        source = OpSource(workload, workload_variant, tag="per-call", worker=0, seed_rows=2000)
        if variant == "read":  # only the reads: the read-mostly workload mixes in 10 % writes
            ops = [op for op in (source.next() for _ in range(3 * (requests + WARMUP))) if op.kind == READ]
        else:
            ops = [source.next() for _ in range(requests + WARMUP)]
        ops = ops[: requests + WARMUP]
        await adapter.setup()
        try:
            for op in ops[:WARMUP]:
                await adapter.request(op)
            gc.collect()
            h0, w0, t0, p0 = hops(), time.perf_counter(), time.thread_time(), time.process_time()
            for op in ops[WARMUP:]:
                await adapter.request(op)
            w1, t1, p1, h1 = time.perf_counter(), time.thread_time(), time.process_time(), hops()
        finally:
            await adapter.teardown()
    finally:
        target.destroy()
    n = len(ops) - WARMUP
    return {
        "wall": (w1 - w0) / n * 1e6,
        "loop": (t1 - t0) / n * 1e6,
        "process": (p1 - p0) / n * 1e6,
        "hops": (h1 - h0) / n,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--impl", nargs="+", default=list(DEFAULT_IMPLS), choices=sorted(IMPLS))
    parser.add_argument("--variant", nargs="+", default=list(VARIANTS), choices=sorted(VARIANTS))
    args = parser.parse_args()
    hops = count_hops()
    lines = [
        "# Per-request cost, one task alone (SQLite)",
        "",
        "```",
        (".venv/bin/python -m benchmarks.per_call " + shlex.join(sys.argv[1:])).rstrip(),
        "```",
        "",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, load "
        f"average at start {os.getloadavg()[0]:.1f}. {args.requests} requests per row after {WARMUP} warm-up "
        "requests, one after another from one task (no queueing). `loop CPU` is the event-loop thread's CPU per "
        "request, `process CPU` adds aiosqlite's thread and SQLite, `hops` counts calls into aiosqlite's thread. "
        "The counter and check-then-insert rows include a read inside the write transaction.",
        "",
        "| variant | implementation | wall us | loop CPU us | process CPU us | hops |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    for variant in args.variant:
        for impl in args.impl:
            if "sqlite" not in IMPLS[impl].backends:
                continue
            r = await measure(impl, variant, args.requests, hops)
            line = (
                f"| {variant} | {impl} | {r['wall']:,.0f} | {r['loop']:,.0f} | {r['process']:,.0f} | {r['hops']:.1f} |"
            )
            lines.append(line)
            print(line, flush=True)
    write_section(RESULTS, lines)


if __name__ == "__main__":
    asyncio.run(main())

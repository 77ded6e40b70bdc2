"""CPU instructions per request, counted by valgrind (callgrind): the cost of each layer, free of machine noise.

Run: .venv/bin/python -m benchmarks.instructions [--requests 500] [--row IMPL:VARIANT[:BACKEND[:TASKS]] ...]

Wall-clock figures on this shared 2-core VM drift by 2-3x over a day, and A/B timings of a few percent drown
in that. An instruction count does not drift: each row runs one task issuing requests one after another
through the same adapters as `python -m benchmarks run` (or TASKS tasks at once, for group commit, whose
batches only form when requests overlap), under `valgrind --tool=callgrind`, once with 0 and
once with N measured requests (both after the same warm-up); the difference over N is the instructions
one request executes in user space, over every thread of the process (aiosqlite's included). The SQLite
library is counted (it runs in the process); the PostgreSQL server and the kernel are not, so a thread
hop or a round trip shows only its Python and libc side here (its wake-ups cost more in time than this).

`orm-floor` is SQLAlchemy's synchronous ORM on stdlib sqlite3 with no asyncio at all: the part of every
ORM-based stack that no async layer can remove.

Writes benchmarks/results/instructions.md; `python -m benchmarks render` includes it in RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import write_section

RESULTS = Path(__file__).resolve().parent / "results" / "instructions.md"
WARMUP = 200
DEFAULT_ROWS = (
    "orm-floor:insert",
    "usual:insert",
    "dbf-write:insert",
    "dbf-write-core:insert",
    "orm-floor:read",
    "usual:read",
    "dbf-write:read",
    "sqlalchemy-asyncpg:insert:postgres",
    "dbf-write:insert:postgres",
    "asyncpg-raw:insert:postgres",
    "sqlalchemy-asyncpg:check-then-insert:postgres",
    "dbf-write:check-then-insert:postgres",
    "sqlalchemy-asyncpg:read:postgres",
    "dbf-write:read:postgres",
    "asyncpg-raw:read:postgres",
    "dbf-submit:insert:sqlite:64",
    "sqlite3-raw-batched:insert:sqlite:64",
    "dbf-submit:insert:postgres:64",
)
VARIANTS = {
    "insert": ("ingest", "insert"),
    "check-then-insert": ("ingest", "check-then-insert"),
    "read": ("read-mostly", "point-read"),
}


async def _child(impl: str, variant: str, backend: str, tasks: int, requests: int, generate: int) -> None:
    """Inside valgrind: warm up, then `requests` requests from `tasks` tasks (0 for the baseline run). Both
    runs generate the ops of `generate` requests, so making them is not counted as part of a request."""
    from benchmarks.adapters import IMPLS
    from benchmarks.scenarios import READ, OpSource
    from benchmarks.targets import PostgresTarget, SQLiteTarget

    workload, workload_variant = VARIANTS[variant]
    target = PostgresTarget() if backend == "postgres" else SQLiteTarget(Path(tempfile.gettempdir()))
    await asyncio.to_thread(target.setup, 2000)  # PostgresTarget.setup runs its own event loop
    try:
        # Seeded: the payloads (and so the bytes SQLite and JSON handle) are the same in both runs.
        source = OpSource(workload, workload_variant, tag="ir", worker=0, seed_rows=2000, rng=random.Random(7))
        wanted = WARMUP + requests
        generated = (source.next() for _ in range(4 * (WARMUP + generate)))
        ops = [op for op in generated if variant != "read" or op.kind == READ]
        adapter = IMPLS[impl].load()(target.url, workload, workload_variant, tasks=tasks)
        await adapter.setup()
        try:
            queue = iter(ops[:wanted])

            async def task() -> None:
                for op in queue:  # shared: the tasks take the ops in turn, as requests arriving at once
                    await adapter.request(op)

            await asyncio.gather(*(task() for _ in range(tasks)))
        finally:
            await adapter.teardown()
    finally:
        await asyncio.to_thread(target.destroy)


def _count(impl: str, variant: str, backend: str, tasks: int, requests: int, generate: int) -> int:
    """Instructions of a child process that runs `requests` measured requests, as callgrind counts them."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        f"{impl}:{variant}:{backend}:{tasks}",
        "--requests",
        str(requests),
        "--generate",
        str(generate),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{impl}:{variant}:{backend}:{tasks} failed under valgrind:\n{done.stderr[-3000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--row", nargs="+", default=list(DEFAULT_ROWS), help="IMPL:VARIANT[:BACKEND[:TASKS]]")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, variant, backend, tasks = args.child.split(":")
        asyncio.run(_child(impl, variant, backend, int(tasks), args.requests, max(args.generate, args.requests)))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind (it counts the instructions)")
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False)  # noqa: S607
    lines = [
        "# CPU instructions per request (valgrind)",
        "",
        "```",
        (".venv/bin/python -m benchmarks.instructions " + shlex.join(sys.argv[1:])).rstrip(),
        "```",
        "",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{valgrind.stdout.strip()}. "
        f"One task (or `tasks` at once), {args.requests} requests after {WARMUP} warm-up requests, user-space "
        "instructions of the "
        "whole process (every thread, SQLite included; not the kernel, not the PostgreSQL server). "
        "Deterministic: reruns agree to within ~1 %. `x orm-floor` divides by the same variant's `orm-floor` row.",
        "",
        "| variant | backend | implementation | tasks | instructions per request | x orm-floor |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    floors: dict[str, int] = {}
    for row in args.row:
        impl, variant, *rest = row.split(":")
        backend = rest[0] if rest else "sqlite"
        tasks = int(rest[1]) if len(rest) > 1 else 1
        n = max(1, args.requests)
        counted = _count(impl, variant, backend, tasks, n, n) - _count(impl, variant, backend, tasks, 0, n)
        per_request = counted // n
        if impl == "orm-floor":
            floors[variant] = per_request
        floor = floors.get(variant)
        ratio = f"{per_request / floor:.2f}" if floor and backend == "sqlite" and tasks == 1 else ""
        line = f"| {variant} | {backend} | {impl} | {tasks} | {per_request:,} | {ratio} |"
        lines.append(line)
        print(line, flush=True)
    write_section(RESULTS, lines)


if __name__ == "__main__":
    main()

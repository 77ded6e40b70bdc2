"""Per-test cost of database isolation: the pytest plugin's rolled-back transaction against the usual resets.

Run: .venv/bin/python benchmarks/fixture_overhead.py [--iterations 200] [--tables 20 100] [--postgres URL]

Each simulated test inserts 5 rows into every table (one executemany per table, each row pointing at a row
of the previous table through a foreign key) and counts the last table. Strategies:

- work only: the inserts committed on a long-lived Database, nothing reset (the test's own work; not
  isolated, shown as the floor the others are compared with);
- dbf_database fixture: what the plugin does per test: start a Database (engines, pools), open the outer
  transaction, run the work in SAVEPOINTs, check deferred constraints, roll back, stop the Database;
- outer transaction + SAVEPOINT: the same isolation on a long-lived Database (the mechanism alone);
- delete-all: commit the work, then DELETE FROM every table (children first);
- drop-and-create: commit the work, then drop_all + create_all.

Writes benchmarks/results/fixture_overhead.md (the table printed here, the command at its top).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, func, select

from benchmarks.report import write_section
from dbfoundation import Database, DatabaseSettings
from dbfoundation.pytest_plugin import isolated_database

RESULTS = Path(__file__).parent / "results" / "fixture_overhead.md"
ROWS_PER_TABLE = 5
WARMUP = 5
BUDGET_S = 20.0  # drop-and-create on PostgreSQL at 100 tables takes seconds per test: cap each row's time
MIN_SAMPLES = 30


def make_metadata(tables: int) -> MetaData:
    metadata = MetaData()
    for i in range(tables):
        columns: list[Any] = [Column("id", Integer, primary_key=True), Column("name", String(50), nullable=False)]
        if i:
            columns.append(Column("parent_id", Integer, ForeignKey(f"t{i - 1:03d}.id"), nullable=True))
        Table(f"t{i:03d}", metadata, *columns)
    return metadata


async def do_work(db: Database, metadata: MetaData, base_id: int = 0) -> None:
    """The test's own work: 5 rows per table (children point at their parents), then one count."""
    async with db.write() as session:
        for index, table in enumerate(metadata.sorted_tables):
            rows = [
                {"id": base_id + n, "name": f"row {n}", **({"parent_id": base_id + n} if index else {})}
                for n in range(1, ROWS_PER_TABLE + 1)
            ]
            await session.execute(table.insert(), rows)
    async with db.read() as session:
        last = metadata.sorted_tables[-1]
        assert await session.scalar(select(func.count()).select_from(last)) >= ROWS_PER_TABLE


def settings_for(url: str) -> DatabaseSettings:
    return DatabaseSettings(url=url, sqlite_checkpoint_interval=0)


async def create_schema(url: str, metadata: MetaData) -> None:
    async with Database(settings_for(url)) as db, db.connection() as connection:
        await connection.run_sync(metadata.create_all)


async def measure(run_one: Callable[[int], Awaitable[None]], iterations: int) -> list[float]:
    """`iterations` timed tests in ms, or fewer (never under MIN_SAMPLES) once BUDGET_S seconds are spent."""
    for i in range(WARMUP):
        await run_one(-1 - i)
    timings: list[float] = []
    started = time.perf_counter()
    for i in range(iterations):
        began = time.perf_counter()
        await run_one(i)
        timings.append((time.perf_counter() - began) * 1000)
        if len(timings) >= MIN_SAMPLES and time.perf_counter() - started > BUDGET_S:
            break
    return timings


async def strategies(url: str, metadata: MetaData, iterations: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    settings = settings_for(url)

    async with Database(settings) as db:

        async def work_only(i: int) -> None:
            await do_work(db, metadata, base_id=(i + WARMUP + 1) * 1000)

        results["work only (not isolated)"] = await measure(work_only, iterations)
        async with db.write() as session:  # back to empty for the others
            for table in reversed(metadata.sorted_tables):
                await session.execute(table.delete())

    async def fixture(_: int) -> None:
        async with isolated_database(settings) as isolated:
            await do_work(isolated, metadata)
        assert not isolated.deferred_problems

    results["dbf_database fixture (per-test Database)"] = await measure(fixture, iterations)

    async with Database(settings) as db:

        async def savepoint(_: int) -> None:
            async with db.engines.writer.connect() as outer:
                await outer.begin()
                async with db.joined(outer) as joined:
                    await do_work(db, metadata)
                    assert await joined.check_deferred_constraints() == []
                await outer.rollback()

        results["outer transaction + SAVEPOINT (shared engine)"] = await measure(savepoint, iterations)

        async def delete_all(_: int) -> None:
            await do_work(db, metadata)
            async with db.write() as session:
                for table in reversed(metadata.sorted_tables):
                    await session.execute(table.delete())

        results["delete-all"] = await measure(delete_all, iterations)

        async def drop_and_create(_: int) -> None:
            await do_work(db, metadata)
            async with db.connection() as connection:
                await connection.run_sync(metadata.drop_all)
                await connection.run_sync(metadata.create_all)

        results["drop-and-create"] = await measure(drop_and_create, iterations)
    return results


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def run_backend(backend: str, admin_url: str, tables: int, iterations: int) -> dict[str, list[float]]:
    metadata = make_metadata(tables)
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="dbf-bench-") as folder:
            url = f"sqlite:///{Path(folder) / 'app.db'}"
            await create_schema(url, metadata)
            return await strategies(url, metadata, iterations)
    name = f"dbf_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        await create_schema(url, metadata)
        return await strategies(url, metadata, iterations)
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def postgres_version(admin_url: str) -> str | None:
    try:
        connection = await asyncpg.connect(admin_url, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return None
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--tables", type=int, nargs="+", default=[20, 100])
    parser.add_argument(
        "--postgres",
        default=os.environ.get("DBF_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="server + maintenance database; a database is created and dropped for the run",
    )
    args = parser.parse_args()
    pg_version = await postgres_version(args.postgres)
    backends = ["sqlite"] + (["postgresql"] if pg_version else [])
    lines = [
        "# Per-test cost of database isolation",
        "",
        "```",
        (".venv/bin/python benchmarks/fixture_overhead.py " + shlex.join(sys.argv[1:])).rstrip(),
        "```",
        "",
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, PostgreSQL "
        f"{pg_version or 'not reachable (skipped)'}, {os.cpu_count()} CPUs, load average at start "
        f"{os.getloadavg()[0]:.1f}. up to {args.iterations} tests per row "
        f"(fewer, at least {MIN_SAMPLES}, once a row passes {BUDGET_S:.0f} s) after {WARMUP} warm-up tests; each test "
        f"inserts {ROWS_PER_TABLE} rows into every table (foreign key to the previous table) and counts one. "
        "SQLite: WAL, synchronous=NORMAL, foreign keys on (dbfoundation defaults). Overhead = median minus the "
        "median of 'work only'; it is negative where the strategy never COMMITs the work (no fsync) while "
        "'work only' does.",
        "",
        "| backend | tables | strategy | tests | median ms | p95 ms | overhead ms (median) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    print("\n".join(lines), flush=True)
    for backend in backends:
        for tables in args.tables:
            results = await run_backend(backend, args.postgres, tables, args.iterations)
            floor = statistics.median(results["work only (not isolated)"])
            for strategy, timings in results.items():
                median = statistics.median(timings)
                overhead = "—" if strategy.startswith("work only") else f"{median - floor:+.2f}"
                line = (
                    f"| {backend} | {tables} | {strategy} | {len(timings)} | {median:.2f} "
                    f"| {percentile(timings, 0.95):.2f} | {overhead} |"
                )
                lines.append(line)
                print(line, flush=True)
    write_section(RESULTS, lines)


if __name__ == "__main__":
    asyncio.run(main())

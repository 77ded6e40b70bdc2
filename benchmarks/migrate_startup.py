"""Start-up cost of migrations: `db.migrate()` at head (warm and cold), and 8 replicas starting together.

Run: .venv/bin/python benchmarks/migrate_startup.py [--quick] [--postgres URL] [--workdir DIR]

Uses the reference service's Alembic migrations (examples/service/migrations) through
`examples.service.app.service_settings(url=...)`, on a SQLite file and on PostgreSQL:

1. at head, warm: one Database in this process, median/p95 of 50 `await db.migrate()` calls;
2. at head, cold: a fresh `python` process that imports dbfoundation and the service's settings, builds
   `Database(service_settings(url=...))` and calls `await db.migrate()`; wall time of the whole process
   (spawn to exit) and of the migrate call alone, median of 5;
3. 8 replicas on an EMPTY database: 8 spawned processes released at a barrier each call
   `dbfoundation.migrations.upgrade(service_settings(url=...))`; time from the barrier to the last process
   done (median of 3, a fresh database per repeat), how many ran migrations (True) vs found head (False),
   then a check: version == head, every table present, no process errored.

Writes benchmarks/results/migrations.md. `--quick`: fewer calls and repeats, results not written unless --out.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "migrations.md"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
REPLICAS = 8

if str(ROOT) not in sys.path:  # run as a script: make `examples` and `benchmarks` importable
    sys.path.insert(0, str(ROOT))

COLD_CHILD = """
import time
t0 = time.perf_counter()
import asyncio
import dbfoundation
from dbfoundation import Database
from examples.service.app import service_settings
t1 = time.perf_counter()
db = Database(service_settings(url={url!r}))
async def main():
    t = time.perf_counter()
    ran = await db.migrate()
    return ran, time.perf_counter() - t
ran, migrate_s = asyncio.run(main())
print("RESULT", ran, t1 - t0, migrate_s, flush=True)
"""


# -- helpers -------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def loadavg() -> float:
    return os.getloadavg()[0]


async def pg_admin(admin_url: str, sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def create_postgres(admin_url: str) -> tuple[str, str]:
    """A fresh database on the server of `admin_url`: (its name, its URL). Drop it with drop_postgres."""
    from sqlalchemy.engine import make_url

    name = f"dbf_bench_mig_{uuid.uuid4().hex[:10]}"
    asyncio.run(pg_admin(admin_url, f'CREATE DATABASE "{name}"'))
    return name, make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres(admin_url: str, name: str) -> None:
    asyncio.run(pg_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def scratch_sqlite(workdir: Path) -> str:
    folder = Path(tempfile.mkdtemp(prefix="dbf_bench_mig_", dir=workdir))
    return f"sqlite:///{folder / 'app.db'}"


def expected_tables() -> set[str]:
    from examples.service.models import Base

    return {*Base.metadata.tables, "alembic_version"}


async def verify(url: str) -> dict[str, Any]:
    """Version == head and every table of the service's models present (read through a plain engine)."""
    from examples.service.app import service_settings
    from sqlalchemy import inspect
    from sqlalchemy.ext.asyncio import create_async_engine

    from dbfoundation.migrations import migration_state

    settings = service_settings(url=url)
    state = await migration_state(settings)
    engine = create_async_engine(settings.async_url)
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    missing = sorted(expected_tables() - tables)
    return {
        "at_head": bool(state and state.is_at_head),
        "current": ",".join(state.current) if state else "?",
        "head": ",".join(state.heads) if state else "?",
        "missing_tables": missing,
    }


# -- 1. warm ---------------------------------------------------------------------------------------------


async def warm(url: str, calls: int) -> dict[str, Any]:
    from examples.service.app import service_settings

    from dbfoundation import Database

    db = Database(service_settings(url=url))
    first = time.perf_counter()
    ran_first = await db.migrate()  # empty → head (also loads Alembic in this process)
    first_s = time.perf_counter() - first
    for _ in range(3):
        assert await db.migrate() is False
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        ran = await db.migrate()
        samples.append((time.perf_counter() - t) * 1000)
        assert ran is False
    return {
        "calls": calls,
        "median_ms": statistics.median(samples),
        "p95_ms": pct(samples, 95),
        "max_ms": max(samples),
        "first_ms": first_s * 1000,
        "first_ran": ran_first,
    }


# -- 2. cold ---------------------------------------------------------------------------------------------


def cold(url: str, repeats: int) -> dict[str, Any]:
    code = COLD_CHILD.format(url=url)
    walls, migrates, imports = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"cold child failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        _, ran, import_s, migrate_s = line.split()
        if ran != "False":
            raise RuntimeError(f"cold child migrated ({ran}); the database should be at head")
        walls.append(wall * 1000)
        imports.append(float(import_s) * 1000)
        migrates.append(float(migrate_s) * 1000)
    return {
        "repeats": repeats,
        "wall_ms": statistics.median(walls),
        "import_ms": statistics.median(imports),
        "migrate_ms": statistics.median(migrates),
        "migrate_max_ms": max(migrates),
    }


# -- 3. replicas -----------------------------------------------------------------------------------------


class _AppliedCounter(logging.Handler):
    """Counts Alembic's "Running upgrade a -> b" records: the revisions this process really applied."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.applied = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Running upgrade"):
            self.applied += 1


def replica(url: str, barrier: Any, queue: Any, index: int) -> None:
    """One replica: import everything first, wait at the barrier, then upgrade."""
    counter = _AppliedCounter()
    alembic_log = logging.getLogger("alembic.runtime.migration")
    alembic_log.addHandler(counter)
    alembic_log.setLevel(logging.INFO)
    try:
        from examples.service.app import service_settings

        from dbfoundation.migrations import upgrade

        settings = service_settings(url=url)
    except BaseException:
        queue.put((index, None, traceback.format_exc(), 0.0, 0.0, 0))
        barrier.abort()
        raise
    barrier.wait()
    started = time.monotonic()
    try:
        ran = asyncio.run(upgrade(settings))
        queue.put((index, ran, None, started, time.monotonic(), counter.applied))
    except BaseException:
        queue.put((index, None, traceback.format_exc(), started, time.monotonic(), counter.applied))


def replicas_once(url: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(REPLICAS + 1)
    queue = ctx.Queue()
    procs = [ctx.Process(target=replica, args=(url, barrier, queue, i)) for i in range(REPLICAS)]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)  # every replica has imported; they are released together with us
    released = time.monotonic()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r[2] for r in results if r[2] is not None]
    done = max(r[4] for r in results)
    check = asyncio.run(verify(url))
    return {
        "wall_ms": (done - released) * 1000,
        "ran": sum(1 for r in results if r[1] is True),
        "found_head": sum(1 for r in results if r[1] is False),
        "applied": sum(1 for r in results if r[5]),
        "revisions_applied": sum(r[5] for r in results),
        "errors": errors,
        "exitcodes": [p.exitcode for p in procs],
        **check,
    }


# -- driver ----------------------------------------------------------------------------------------------


def new_url(backend: str, args: argparse.Namespace, created: list[str]) -> str:
    """A fresh SQLite file (in a new folder) or PostgreSQL database; drop_all removes what was created."""
    if backend == "sqlite":
        url = scratch_sqlite(args.workdir)
        created.append(url)
        return url
    name, url = create_postgres(args.postgres)
    created.append(name)
    return url


def drop_all(args: argparse.Namespace, created: list[str]) -> None:
    while created:
        item = created.pop()
        if item.startswith("sqlite:///"):
            shutil.rmtree(Path(item.removeprefix("sqlite:///")).parent, ignore_errors=True)
        else:
            drop_postgres(args.postgres, item)


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    calls, cold_n, rep_n = (10, 2, 1) if args.quick else (50, 5, 3)
    created: list[str] = []
    out: dict[str, Any] = {"backend": backend}
    try:
        url = new_url(backend, args, created)
        out["warm"] = asyncio.run(warm(url, calls))
        out["cold"] = cold(url, cold_n)
        reps = []
        for _ in range(rep_n):
            drop_all(args, created)
            url = new_url(backend, args, created)
            reps.append(replicas_once(url))
        out["replicas"] = reps
    finally:
        drop_all(args, created)
    return out


def machine(admin_url: str | None) -> dict[str, Any]:
    pg = None
    if admin_url:
        try:
            pg = asyncio.run(pg_admin(admin_url, "SHOW server_version"))
        except Exception as exc:
            pg = f"unavailable ({type(exc).__name__})"
    from importlib import metadata

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": pg,
        "sqlalchemy": metadata.version("sqlalchemy"),
        "alembic": metadata.version("alembic"),
        "platform": platform.platform(),
    }


def render(results: list[dict[str, Any]], facts: dict[str, Any], command: str, loads: list[float]) -> str:
    lines = [
        "# Migration start-up cost",
        "",
        "```",
        command,
        "```",
        "",
        f"{facts['cpus']} CPUs (os.cpu_count), Python {facts['python']}, SQLite {facts['sqlite']}, PostgreSQL "
        f"{facts['postgres']}, SQLAlchemy {facts['sqlalchemy']}, Alembic {facts['alembic']}, {facts['platform']}. "
        f"1-minute load average during the run: min {min(loads):.1f}, max {max(loads):.1f} (sampled between "
        f"steps; a shared machine, the benchmark's own processes count in it). Date: "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "Migrations: the reference service's (`examples/service/migrations`, one revision creating 6 tables "
        "with their indexes). SQLite: a file on local disk; PostgreSQL: 127.0.0.1, a fresh database per "
        "measurement (`CREATE DATABASE`, dropped afterwards).",
        "",
        "## `db.migrate()` when the database is already at head",
        "",
        "Warm: one `Database` in one process, after a first migrate (which loads Alembic) and 3 warm-up calls. "
        "Cold: a fresh `python -c` that imports dbfoundation and the service's settings, builds "
        "`Database(service_settings(url=...))` and awaits `db.migrate()`; `process wall` is spawn to exit "
        "as seen by the parent, `imports` is the child's import time, `migrate` is the call alone.",
        "",
        "| backend | warm calls | warm median ms | warm p95 ms | warm max ms | first migrate (empty → head) ms "
        "| cold runs | cold process wall ms | cold imports ms | cold migrate ms (median) | cold migrate max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        w, c = r["warm"], r["cold"]
        lines.append(
            f"| {r['backend']} | {w['calls']} | {w['median_ms']:.2f} | {w['p95_ms']:.2f} | {w['max_ms']:.2f} | "
            f"{w['first_ms']:.0f} | {c['repeats']} | {c['wall_ms']:.0f} | {c['import_ms']:.0f} | "
            f"{c['migrate_ms']:.1f} | {c['migrate_max_ms']:.1f} |"
        )
    lines += [
        "",
        f"## {REPLICAS} replicas starting together on an empty database",
        "",
        f"{REPLICAS} OS processes (multiprocessing spawn) import dbfoundation and the service first, then are "
        "released at one barrier and each call `dbfoundation.migrations.upgrade(service_settings(url=...))`. "
        "Wall = barrier release to the last process done. `ran` = processes whose upgrade returned True (ran "
        "the lock path), `found head` = returned False (the lock-free fast path), `applied` = processes that "
        "really applied a revision (counted from Alembic's `Running upgrade` log records in each process). "
        "Checked afterwards: version == head, every model table and `alembic_version` present, no process "
        "errored.",
        "",
        "| backend | repeats | wall ms (median) | wall ms (each) | returned True / False (each) | applied (each) "
        "| errors | at head | tables missing |",
        "| --- | ---: | ---: | --- | --- | --- | ---: | --- | --- |",
    ]
    for r in results:
        reps = r["replicas"]
        walls = [x["wall_ms"] for x in reps]
        lines.append(
            f"| {r['backend']} | {len(reps)} | {statistics.median(walls):.0f} | "
            f"{', '.join(f'{w:.0f}' for w in walls)} | "
            f"{', '.join(str(x['ran']) + '/' + str(x['found_head']) for x in reps)} | "
            f"{', '.join(str(x['applied']) for x in reps)} | "
            f"{sum(len(x['errors']) for x in reps)} | "
            f"{'yes' if all(x['at_head'] for x in reps) else 'NO'} ({reps[0]['head']}) | "
            f"{', '.join(sorted({t for x in reps for t in x['missing_tables']})) or 'none'} |"
        )
    errors = [e for r in results for x in r["replicas"] for e in x["errors"]]
    if errors:
        lines += ["", "Replica errors (last lines):", ""]
        for e in errors[:4]:
            lines += ["```", "\n".join(e.strip().splitlines()[-6:]), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 warm calls, 2 cold runs, 1 replica repeat")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "all"), default="all")
    parser.add_argument("--postgres", default=os.environ.get("DBF_BENCH_POSTGRES_URL", DEFAULT_PG))
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("DBF_BENCH_WORKDIR", tempfile.gettempdir()))
    )
    parser.add_argument("--out", type=Path, default=None, help="markdown output (default: results/migrations.md)")
    args = parser.parse_args(argv)
    command = (
        ".venv/bin/python benchmarks/migrate_startup.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    ).rstrip()
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    facts = machine(args.postgres if "postgres" in backends else None)
    loads = [loadavg()]
    results = []
    for backend in backends:
        t = time.perf_counter()
        results.append(run_backend(backend, args))
        loads.append(loadavg())
        r = results[-1]
        print(
            f"{backend}: warm median {r['warm']['median_ms']:.2f} ms p95 {r['warm']['p95_ms']:.2f} ms; cold wall "
            f"{r['cold']['wall_ms']:.0f} ms migrate {r['cold']['migrate_ms']:.1f} ms; replicas "
            + "; ".join(
                f"{x['wall_ms']:.0f} ms ran {x['ran']} head {x['found_head']} applied {x['applied']} "
                f"errors {len(x['errors'])} at_head {x['at_head']} missing {x['missing_tables']}"
                for x in r["replicas"]
            )
            + f" ({time.perf_counter() - t:.1f} s)",
            flush=True,
        )
    text = render(results, facts, command, loads)
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        out.write_text(text)
        print(f"wrote {out}")
    else:
        print(text)
    failed = any(x["errors"] or not x["at_head"] or x["missing_tables"] for r in results for x in r["replicas"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

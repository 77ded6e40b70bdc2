"""The reference service over HTTP: `POST /signals` beside the usual way, and `/health/ready` on a 1 GB file.

Run: .venv/bin/python benchmarks/service_http.py [--quick] [--postgres URL] [--workdir DIR]

1. `POST /signals` against a real `uvicorn --workers 4` on SQLite and on PostgreSQL: the reference service
   (`--factory examples.service.app:create_app`, DATABASE_URL set, cwd = repo root) beside the same endpoint
   written the usual way (`benchmarks/usual_signals_app.py`). A fresh database per run; runs interleaved
   (dbf, usual, dbf, usual, ...), 3 repeats x 10 s measured after 1 s of warm-up, 64 concurrent keep-alive
   connections from this process (a minimal asyncio HTTP/1.1 client, far cheaper per request than httpx, so
   the load generator takes less of the 2 CPUs from the servers). Bodies are ~450-byte JSON webhooks; 10 %
   are retries of an earlier body of the same connection (a duplicate, answered 200). Non-2xx answers are
   counted by status; after each run the server is stopped and every `signal_id` acknowledged with a 2xx
   (warm-up included) is looked up: `missing` (acknowledged but absent) must be 0.
2. `/health/ready` on a 1 GB and a 1 MB SQLite file (built once with stdlib sqlite3 in WAL mode and cached
   under the work dir): (a) in-process `check_health(db, max_age_s=0)`, 200 probes, counting the statements
   each probe runs on the reader engine; (b) `GET /health/ready` through the service in uvicorn (1 worker),
   200 requests 20 ms apart with the 1 s cache in effect.

Writes benchmarks/results/service_http.md. `--quick`: 1 repeat x 2 s, 50 probes, a 32 MB "large" file unless
the 1 GB one is already cached; results printed, not written, unless --out is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "service_http.md"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
APPS = {"dbf": "examples.service.app:create_app", "usual": "benchmarks.usual_signals_app:create_app"}
GB = 1024**3
MB = 1024**2

if str(ROOT) not in sys.path:  # run as a script: make `examples` and `benchmarks` importable
    sys.path.insert(0, str(ROOT))


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def loadavg() -> float:
    return os.getloadavg()[0]


# -- a minimal keep-alive HTTP/1.1 client ------------------------------------------------------------------


class Connection:
    """One keep-alive connection; `request()` returns (status, body). Reconnects after the server closes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            raise ConnectionError("the server closed the connection") from None
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
        else:
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, data


# -- servers ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`uvicorn --factory APP --workers N` in its own process group, DATABASE_URL set, cwd = repo root."""

    def __init__(self, app: str, database_url: str, workers: int, log: Path) -> None:
        self.port = free_port()
        self.workers = workers
        self.log = log
        self.command = [
            sys.executable, "-m", "uvicorn", "--factory", app, "--workers", str(workers),
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info", "--no-access-log",
        ]  # fmt: skip
        env = {**os.environ, "DATABASE_URL": database_url}
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            self.command, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_started(self, timeout: float = 90.0) -> None:
        """Until every worker has logged "Application startup complete"."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if text.count("Application startup complete") >= self.workers:
                return
            if self.proc.poll() is not None or "Traceback" in text:
                raise RuntimeError(f"uvicorn failed to start:\n{text[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"uvicorn did not start within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the supervisor stops its workers gracefully
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own process group only
                self.proc.wait()
        self._log_file.close()


# -- databases -------------------------------------------------------------------------------------------


async def pg_admin(admin_url: str, sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


class Scratch:
    """A fresh database per run: a SQLite file in a new folder, or CREATE DATABASE on the server."""

    def __init__(self, backend: str, args: argparse.Namespace) -> None:
        self.backend, self.args = backend, args
        if backend == "sqlite":
            folder = Path(tempfile.mkdtemp(prefix="dbf_bench_http_", dir=args.workdir))
            self.path = folder / "app.db"
            self.url = f"sqlite:///{self.path}"
        else:
            from sqlalchemy.engine import make_url

            self.name = f"dbf_bench_http_{uuid.uuid4().hex[:10]}"
            asyncio.run(pg_admin(args.postgres, f'CREATE DATABASE "{self.name}"'))
            self.url = make_url(args.postgres).set(database=self.name).render_as_string(hide_password=False)

    def signal_ids(self) -> set[str]:
        if self.backend == "sqlite":
            with sqlite3.connect(self.path) as conn:
                return {row[0] for row in conn.execute("SELECT signal_id FROM signals")}

        async def fetch() -> set[str]:
            import asyncpg

            conn = await asyncpg.connect(self.url)
            try:
                return {r[0] for r in await conn.fetch("SELECT signal_id FROM signals")}
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def drop(self) -> None:
        if self.backend == "sqlite":
            shutil.rmtree(self.path.parent, ignore_errors=True)
            return
        asyncio.run(pg_admin(self.args.postgres, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


# -- 1. POST /signals ------------------------------------------------------------------------------------


def make_body(rng: random.Random) -> bytes:
    """A ~450-byte webhook body; no `signal_id` field, so both apps key it by the hash of the body."""
    body = {
        "event_id": uuid.UUID(int=rng.getrandbits(128)).hex,
        "type": rng.choice(["message.created", "call.ended", "device.seen", "payment.succeeded"]),
        "created": 1_700_000_000 + rng.randrange(10**7),
        "source": {"system": "bench", "region": rng.choice(["eu", "us", "ap"]), "version": "2.4.1"},
        "data": {
            "user": f"user-{rng.randrange(10**6):06d}",
            "channel": f"channel-{rng.randrange(1000):04d}",
            "text": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(200)),
            "tags": ["alpha", "beta", "gamma"],
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def load(port: int, *, concurrency: int, warmup: float, duration: float, dup_share: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    begin = loop.time()
    start, end = begin + warmup, begin + warmup + duration
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    acked: set[str] = set()
    totals = {"ok": 0, "dups": 0, "sent_dups": 0}

    async def worker(index: int) -> None:
        rng = random.Random(index * 7919 + int(begin * 1000))
        conn = Connection(port)
        sent: list[bytes] = []
        try:
            while loop.time() < end:
                if sent and rng.random() < dup_share:
                    body = rng.choice(sent)
                    totals["sent_dups"] += 1
                else:
                    body = make_body(rng)
                    sent.append(body)
                t0 = loop.time()
                try:
                    status, data = await conn.request("POST", "/signals", body)
                except (OSError, ConnectionError) as exc:
                    errors[type(exc).__name__] += 1
                    await conn.close()
                    continue
                t1 = loop.time()
                if 200 <= status < 300:
                    answer = json.loads(data)
                    acked.add(answer["signal_id"])
                    totals["dups"] += bool(answer.get("duplicate"))
                if start <= t1 <= end:
                    statuses[status] += 1
                    latencies.append((t1 - t0) * 1000)
                    totals["ok"] += 200 <= status < 300
        finally:
            await conn.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {
        "throughput": totals["ok"] / duration,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "max_ms": max(latencies) if latencies else None,
        "statuses": dict(statuses),
        "non2xx": {str(k): v for k, v in statuses.items() if not 200 <= k < 300},
        "conn_errors": dict(errors),
        "acked": acked,
        "dups_answered": totals["dups"],
        "dups_sent": totals["sent_dups"],
    }


def signals_run(impl: str, backend: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    scratch = Scratch(backend, args)
    load_before = loadavg()
    server = Server(APPS[impl], scratch.url, 4, logs / f"uvicorn-{impl}-{backend}-{uuid.uuid4().hex[:6]}.log")
    try:
        server.wait_started()
        result = asyncio.run(
            load(server.port, concurrency=args.concurrency, warmup=args.warmup, duration=args.duration, dup_share=0.1)
        )
    finally:
        server.stop()
    load_after = loadavg()
    try:
        present = scratch.signal_ids()
    finally:
        scratch.drop()
    acked = result.pop("acked")
    result.update(
        impl=impl,
        backend=backend,
        acked=len(acked),
        rows=len(present),
        missing=len(acked - present),
        unacked_present=len(present - acked),
        load_before=load_before,
        load_after=load_after,
        server_errors=server.log.read_text().count("Traceback"),
    )
    return result


# -- 2. /health/ready on a big file ----------------------------------------------------------------------


def build_file(path: Path, target_bytes: int) -> Path:
    """A SQLite file of about `target_bytes` (rows of ~1 KB), WAL, built once and reused."""
    if path.exists():
        with sqlite3.connect(path) as conn:
            done = conn.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'bench_built'").fetchone()[0]
        if done:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    rows = max(1, target_bytes // 1060)  # ~1000-byte blob + row and index overhead
    t = time.perf_counter()
    conn = sqlite3.connect(tmp, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, data BLOB NOT NULL)")
    batch = 100_000
    for first in range(0, rows, batch):
        n = min(batch, rows - first)
        conn.execute("BEGIN")
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT ?) "
            "INSERT INTO blobs (kind, data) SELECT 'k' || (x % 10), randomblob(1000) FROM c",
            (n,),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("CREATE TABLE bench_built (rows INTEGER)")
    conn.execute("INSERT INTO bench_built VALUES (?)", (rows,))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    tmp.rename(path)
    print(f"built {path} ({path.stat().st_size / MB:.0f} MiB, {rows} rows) in {time.perf_counter() - t:.1f} s")
    return path


async def probe_in_process(path: Path, probes: int) -> dict[str, Any]:
    from examples.service.app import service_settings
    from sqlalchemy import event

    from dbfoundation import Database
    from dbfoundation.health import check_health

    db = Database(service_settings(url=f"sqlite:///{path}"))
    await db.migrate()
    await db.start()
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    try:
        for _ in range(5):  # warm-up: the first probe also reads the migration state (loads Alembic)
            await check_health(db, max_age_s=0)
        await asyncio.sleep(0)
        event.listen(db.engines.reader.sync_engine, "before_cursor_execute", count)
        latencies, per_probe, status = [], [], Counter()
        for _ in range(probes):
            before = len(statements)
            t = time.perf_counter()
            report = await check_health(db, max_age_s=0)
            latencies.append((time.perf_counter() - t) * 1000)
            per_probe.append(len(statements) - before)
            status[report.status] += 1
        event.remove(db.engines.reader.sync_engine, "before_cursor_execute", count)
    finally:
        await db.stop()
    return {
        "probes": probes,
        "median_ms": statistics.median(latencies),
        "p99_ms": pct(latencies, 99),
        "max_ms": max(latencies),
        "statements": dict(Counter(per_probe)),
        "statement_texts": sorted(set(statements)),
        "status": dict(status),
    }


async def _spaced_gets(port: int, probes: int, spacing_s: float) -> dict[str, Any]:
    conn = Connection(port)
    try:
        for _ in range(5):
            await conn.request("GET", "/health/ready")
        loop = asyncio.get_running_loop()
        latencies, codes, probe_times = [], Counter(), set()
        begin = loop.time()
        for i in range(probes):
            delay = begin + i * spacing_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            t = time.perf_counter()
            status, data = await conn.request("GET", "/health/ready")
            latencies.append((time.perf_counter() - t) * 1000)
            codes[status] += 1
            report = json.loads(data)
            probe_times.add(report["checks"]["database:responseTime"][0]["time"])
    finally:
        await conn.close()
    return {
        "probes": probes,
        "median_ms": statistics.median(latencies),
        "p99_ms": pct(latencies, 99),
        "max_ms": max(latencies),
        "codes": dict(codes),
        "fresh_probes": len(probe_times),
    }


def probe_http(path: Path, probes: int, logs: Path) -> dict[str, Any]:
    server = Server(APPS["dbf"], f"sqlite:///{path}", 1, logs / f"uvicorn-health-{path.stem}.log")
    try:
        server.wait_started()
        return asyncio.run(_spaced_gets(server.port, probes, 0.02))
    finally:
        server.stop()


# -- report ----------------------------------------------------------------------------------------------


def machine(admin_url: str | None) -> dict[str, Any]:
    pg = None
    if admin_url:
        try:
            pg = asyncio.run(pg_admin(admin_url, "SHOW server_version"))
        except Exception as exc:
            pg = f"unavailable ({type(exc).__name__})"
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": pg,
        "versions": ", ".join(
            f"{d} {metadata.version(d)}" for d in ("sqlalchemy", "aiosqlite", "asyncpg", "fastapi", "uvicorn")
        ),
        "platform": platform.platform(),
    }


def _f(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def render(
    runs: list[dict[str, Any]],
    health: list[dict[str, Any]],
    facts: dict[str, Any],
    args: argparse.Namespace,
    command: str,
) -> str:
    loads = [x for r in runs for x in (r["load_before"], r["load_after"])] + [h["load"] for h in health]
    lines = [
        "# The reference service over HTTP",
        "",
        "```",
        command,
        "```",
        "",
        f"{facts['cpus']} CPUs (os.cpu_count), shared; Python {facts['python']}, SQLite {facts['sqlite']}, "
        f"PostgreSQL {facts['postgres']}, {facts['versions']}, {facts['platform']}. Date: "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"1-minute load average around the runs: median {statistics.median(loads):.1f}, min {min(loads):.1f}, "
        f"max {max(loads):.1f} (the servers' workers and the load generator count in it).",
        "",
        "## `POST /signals`, uvicorn --workers 4",
        "",
        "`dbf` = the reference service (`uvicorn --factory examples.service.app:create_app --workers 4`; the "
        "handler calls `db.submit(insert(Signal), ...)`, group commit, and answers a `DuplicateKeyError` with "
        "200). `usual` = `benchmarks/usual_signals_app.py`: one `create_async_engine` (SQLite: WAL + "
        "synchronous=NORMAL in a connect event, default deferred transactions; PostgreSQL: default pool), an "
        "`async_sessionmaker` session per request, `session.add` + `commit`, IntegrityError → 200 duplicate. "
        f"A fresh database per run; {args.repeats} repeat(s) x {args.duration:g} s measured after "
        f"{args.warmup:g} s of warm-up, interleaved dbf, usual, dbf, usual; {args.concurrency} concurrent "
        "keep-alive connections from one load-generator process (a minimal asyncio HTTP/1.1 client) on the "
        "same 2 CPUs. Bodies ~450 bytes, 10 % retries of an earlier body. req/s = 2xx answers completed in "
        "the measured window per second (a duplicate answered 200 counts); latencies are client-side, medians "
        "over repeats. `acked` = distinct signal_ids answered 2xx (warm-up included), summed over runs; "
        "`missing` = acked but not in the table after the server stopped (must be 0).",
        "",
        "| backend | app | req/s (median) | req/s (each run) | x usual | p50 ms | p99 ms | max ms | non-2xx by "
        "status | connection errors | dups answered | acked | missing | unacked present |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for backend in dict.fromkeys(r["backend"] for r in runs):
        medians = {}
        for impl in APPS:
            rs = [r for r in runs if r["backend"] == backend and r["impl"] == impl]
            if rs:
                medians[impl] = statistics.median(r["throughput"] for r in rs)
        for impl in APPS:
            rs = [r for r in runs if r["backend"] == backend and r["impl"] == impl]
            if not rs:
                continue
            non2xx: Counter[str] = Counter()
            conn_errors: Counter[str] = Counter()
            for r in rs:
                non2xx.update(r["non2xx"])
                conn_errors.update(r["conn_errors"])
            ratio = medians[impl] / medians["usual"] if medians.get("usual") else None
            lines.append(
                f"| {backend} | {impl} | {_f(medians[impl], 0)} | {', '.join(_f(r['throughput'], 0) for r in rs)} | "
                f"{_f(ratio)} | {_f(statistics.median(r['p50_ms'] for r in rs))} | "
                f"{_f(statistics.median(r['p99_ms'] for r in rs))} | "
                f"{_f(statistics.median(r['max_ms'] for r in rs), 0)} | "
                f"{', '.join(f'{k}: {v}' for k, v in sorted(non2xx.items())) or '0'} | "
                f"{', '.join(f'{k}: {v}' for k, v in sorted(conn_errors.items())) or '0'} | "
                f"{sum(r['dups_answered'] for r in rs)} | {sum(r['acked'] for r in rs)} | "
                f"{sum(r['missing'] for r in rs)} | {sum(r['unacked_present'] for r in rs)} |"
            )
    lines += [
        "",
        "## `/health/ready` on a large SQLite file",
        "",
        "Files built once with stdlib sqlite3 (WAL; one table of ~1 KB random blobs, inserted in transactions "
        "of 100,000 rows) on local disk and reused. The service migrates them at start, so the migrations "
        "check passes. (a) in-process: `Database(service_settings(url=...))` started, 5 warm-up probes, then "
        "`check_health(db, max_age_s=0)` (no cache) back to back; `statements` counts what each probe ran on "
        "`db.engines.reader.sync_engine` (`before_cursor_execute`). (b) HTTP: the service in `uvicorn "
        "--workers 1`, `GET /health/ready` every 20 ms over one keep-alive connection, the default 1 s cache "
        "in effect; `fresh probes` = distinct probe timestamps seen in the bodies (the rest were served "
        "from the cache).",
        "",
        "| file | size MiB | mode | probes | median ms | p99 ms | max ms | statements per probe (count: probes) "
        "| answers | fresh probes |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for h in health:
        a, b = h["in_process"], h["http"]
        size = f"{h['size'] / MB:,.1f}"
        lines.append(
            f"| {h['name']} | {size} | (a) in-process, max_age_s=0 | {a['probes']} | {_f(a['median_ms'])} | "
            f"{_f(a['p99_ms'])} | {_f(a['max_ms'])} | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(a['statements'].items()))} | "
            f"{', '.join(f'{k}: {v}' for k, v in a['status'].items())} | {a['probes']} |"
        )
        lines.append(
            f"| {h['name']} | {size} | (b) GET /health/ready, uvicorn, 1 s cache | {b['probes']} | "
            f"{_f(b['median_ms'])} | {_f(b['p99_ms'])} | {_f(b['max_ms'])} | — | "
            f"{', '.join(f'HTTP {k}: {v}' for k, v in b['codes'].items())} | {b['fresh_probes']} |"
        )
    texts = sorted({t for h in health for t in h["in_process"]["statement_texts"]})
    lines += ["", "Statements the in-process probes ran on the reader engine (all of them):", ""]
    lines += [f"- `{' '.join(t.split())}`" for t in texts]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat x 2 s, 50 probes, smaller large file")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "all"), default="all")
    parser.add_argument("--postgres", default=os.environ.get("DBF_BENCH_POSTGRES_URL", DEFAULT_PG))
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("DBF_BENCH_WORKDIR", tempfile.gettempdir()))
    )
    parser.add_argument("--out", type=Path, default=None, help="markdown output (default: results/service_http.md)")
    parser.add_argument("--skip-health", action="store_true")
    parser.add_argument("--skip-signals", action="store_true")
    args = parser.parse_args(argv)
    args.repeats, args.duration, args.warmup, args.concurrency = (1, 2.0, 0.5, 64) if args.quick else (3, 10.0, 1.0, 64)
    probes = 50 if args.quick else 200
    command = (
        ".venv/bin/python benchmarks/service_http.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    ).rstrip()
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    facts = machine(args.postgres if "postgres" in backends else None)
    logs = Path(tempfile.mkdtemp(prefix="dbf_bench_http_logs_", dir=args.workdir))
    failed = False

    runs: list[dict[str, Any]] = []
    if not args.skip_signals:
        for backend in backends:
            for rep in range(args.repeats):
                for impl in APPS:
                    r = signals_run(impl, backend, args, logs)
                    runs.append(r)
                    failed |= bool(r["missing"])
                    print(
                        f"{backend} {impl} #{rep + 1}: {r['throughput']:.0f} req/s p50 {_f(r['p50_ms'])} p99 "
                        f"{_f(r['p99_ms'])} ms non-2xx {r['non2xx']} conn {r['conn_errors']} acked {r['acked']} "
                        f"rows {r['rows']} missing {r['missing']} load {r['load_after']:.1f}",
                        flush=True,
                    )

    health: list[dict[str, Any]] = []
    if not args.skip_health:
        cache = args.workdir / "dbf_bench_health"
        large = cache / "health_1g.db"
        if args.quick and not large.exists():
            large = build_file(cache / "health_32m.db", 32 * MB)
        else:
            large = build_file(large, GB)
        small = build_file(cache / "health_1m.db", MB)
        for name, path in (("1 MB", small), ("1 GB" if large.name == "health_1g.db" else "32 MB", large)):
            t = loadavg()
            entry = {
                "name": name,
                "size": path.stat().st_size,
                "in_process": asyncio.run(probe_in_process(path, probes)),
                "http": probe_http(path, probes, logs),
                "load": max(t, loadavg()),
            }
            health.append(entry)
            print(
                f"health {name}: in-process median {_f(entry['in_process']['median_ms'])} p99 "
                f"{_f(entry['in_process']['p99_ms'])} statements {entry['in_process']['statements']}; http median "
                f"{_f(entry['http']['median_ms'])} p99 {_f(entry['http']['p99_ms'])} codes {entry['http']['codes']} "
                f"fresh {entry['http']['fresh_probes']}",
                flush=True,
            )

    text = render(runs, health, facts, args, command)
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        out.write_text(text)
        print(f"wrote {out}")
    else:
        print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

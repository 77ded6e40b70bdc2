"""Health: /health/live never touches the database; /health/ready is bounded, cached and never starves the pool."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text

from dbfoundation import Database, DatabaseSettings, WriteTimeout
from dbfoundation.fastapi import health_router, lifespan
from dbfoundation.health import HEALTH_MEDIA_TYPE, HealthReport, check_health
from dbfoundation.migrations.scaffold import init

PROBE_TIMEOUT_S = 1.0  # Kubernetes' default timeoutSeconds: a ready answer must come before it
ENTRY_KEYS = {"componentId", "componentType", "observedValue", "status", "time"}

# Holds SQLite's write lock (BEGIN IMMEDIATE, as the sqlite3 shell or a backup tool would) for a while.
LOCK_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    connection = sqlite3.connect(sys.argv[1], isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("INSERT INTO notes VALUES ('written by the holder')")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    connection.execute("ROLLBACK")
    """
)


def build_app(db: Database, *, require_database: bool = True, deadline_s: float = 0.5, **options: Any) -> FastAPI:
    app = FastAPI(lifespan=lifespan(db, require_database=require_database, **options))
    app.include_router(health_router(deadline_s=deadline_s))
    return app


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan, then give a client talking to it in-process."""
    transport = httpx.ASGITransport(app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app") as client,
    ):
        yield client


async def timed_get(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = await client.get(path)
    return answer, time.monotonic() - started


async def test_ready_answers_the_documented_health_json(backend_url: str) -> None:
    """Ready is application/health+json, not cached, with the documented checks in the draft-06 shape."""
    db = Database.from_url(backend_url)
    async with serve(build_app(db)) as client:
        ready = await client.get("/health/ready")
        live = await client.get("/health/live")
    assert ready.status_code == 200
    assert ready.headers["content-type"] == HEALTH_MEDIA_TYPE
    assert ready.headers["cache-control"] == "no-store"
    body = ready.json()
    assert body["status"] == "pass"
    expected = {"database:responseTime", "database:connections"}
    if db.backend == "sqlite":
        expected |= {"sqlite:walSize", "sqlite:fileSize", "sqlite:journalMode"}
    assert set(body["checks"]) == expected  # no migrations folder here, so no migrations:head
    for entries in body["checks"].values():
        assert all(entry.keys() >= ENTRY_KEYS and entry["status"] == "pass" for entry in entries)
    response_time = body["checks"]["database:responseTime"][0]
    assert response_time["componentType"] == "datastore"
    assert response_time["observedUnit"] == "ms"
    assert response_time["time"].endswith("Z")
    if db.backend == "sqlite":
        assert body["checks"]["sqlite:journalMode"][0]["observedValue"] == "wal"
        assert body["checks"]["sqlite:fileSize"][0]["observedValue"] > 0
    assert (live.status_code, live.headers["content-type"], live.json()) == (200, HEALTH_MEDIA_TYPE, {"status": "pass"})


async def test_probe_runs_only_the_cheap_query_on_a_reader(backend_url: str) -> None:
    """A probe sends only the one cheap statement, on the reader side: no scan, no integrity check, no write slot."""
    db = Database(DatabaseSettings(url=backend_url, pool_pre_ping=False))  # pre-ping would add its own SELECT 1
    async with db:
        statements: list[tuple[str, str]] = []
        # On PostgreSQL without a replica the reader is the writer's engine in read-only transactions, and a
        # listener on either sees both: there, only the statements are checked.
        sides = [("reader", db.engines.reader)] + ([("writer", db.engines.writer)] if db.engines.owns_reader else [])
        for side, engine in sides:
            event.listen(
                engine.sync_engine, "before_cursor_execute", lambda *a, side=side: statements.append((side, a[2]))
            )
        report = await db.health()
        sent = [(side, sql) for side, sql in statements if sql not in ("BEGIN", "ROLLBACK")]
    assert report.status == "pass"
    expected = (
        "SELECT 1"
        if db.backend == "postgresql"
        else ("SELECT (SELECT 1 FROM sqlite_schema LIMIT 1), (SELECT journal_mode FROM pragma_journal_mode)")
    )
    assert [sql for _, sql in sent] == [expected]
    assert all(side == "reader" for side, _ in sent)


async def test_live_answers_while_the_database_file_is_deleted(tmp_path: Path) -> None:
    """Live stays 200 with the SQLite file deleted, while ready fails and says the file is gone."""
    path = tmp_path / "app.db"
    db = Database.from_url(f"sqlite:///{path}")
    async with serve(build_app(db)) as client:
        for suffix in ("", "-wal", "-shm"):
            await asyncio.to_thread(Path(f"{path}{suffix}").unlink, missing_ok=True)
        live = await client.get("/health/live")
        ready, took = await timed_get(client, "/health/ready")
    assert live.status_code == 200
    assert ready.status_code == 503
    assert took < PROBE_TIMEOUT_S
    assert "does not exist" in ready.json()["output"]


async def test_ready_passes_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    """For the 5 s another OS process holds SQLite's write lock, live and ready keep answering 200 in time."""
    path = tmp_path / "app.db"
    db = Database.from_url(f"sqlite:///{path}")
    async with serve(build_app(db)) as client:
        async with db.write() as session:
            await session.execute(text("CREATE TABLE notes (body TEXT)"))
        # A second writer, started before the lock is taken, proves the lock is real by timing out.
        blocked = Database(DatabaseSettings(url=f"sqlite:///{path}", write_timeout=0.2))
        await blocked.start()
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LOCK_HOLDER, str(path), "5", stdout=asyncio.subprocess.PIPE
        )
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"locked\n"
        try:
            with pytest.raises(WriteTimeout):
                async with blocked.write() as session:
                    await session.execute(text("INSERT INTO notes VALUES ('never written')"))
            answers = []
            while holder.returncode is None and len(answers) < 4:
                answers.append((await timed_get(client, "/health/ready"), await client.get("/health/live")))
                await asyncio.sleep(1.05)  # past the 1 s freshness window, so each one is a new probe
            assert holder.returncode is None  # every answer came while the lock was held
        finally:
            await holder.wait()
            await blocked.stop()
    assert len(answers) == 4
    for (ready, took), live in answers:
        assert (ready.status_code, ready.json()["status"], live.status_code) == (200, "pass", 200)
        assert took < PROBE_TIMEOUT_S


async def test_ready_fails_in_time_when_postgres_is_unreachable() -> None:
    """Started degraded against a closed port, ready answers 503 with a reason before the probe timeout; live 200."""
    db = Database.from_url("postgresql://app_user:hunter2-secret@127.0.0.1:1/appdb")
    async with serve(build_app(db, require_database=False)) as client:
        ready, took = await timed_get(client, "/health/ready")
        live = await client.get("/health/live")
    assert (ready.status_code, live.status_code) == (503, 200)
    assert took < PROBE_TIMEOUT_S
    body = ready.json()
    assert body["status"] == "fail"
    assert "connection failed" in body["checks"]["database:responseTime"][0]["output"]
    for secret in ("hunter2", "app_user", "127.0.0.1"):
        assert secret not in ready.text


@pytest.mark.postgres
async def test_ready_fails_in_time_on_an_exhausted_pool_and_recovers(postgres_url: str) -> None:
    """With the only pooled connection held, ready is 503 'pool exhausted' in time; released, it is 200 again."""
    db = Database(DatabaseSettings(url=postgres_url, pool_size=1, max_overflow=0, pool_timeout=30))
    async with serve(build_app(db)) as client:
        async with db.engines.writer.connect() as held:
            await held.execute(text("SELECT 1"))
            exhausted, took = await timed_get(client, "/health/ready")
        await asyncio.sleep(1.05)  # the failed result is reused for 1 s; the next probe is new
        recovered = await client.get("/health/ready")
    assert exhausted.status_code == 503
    assert took < PROBE_TIMEOUT_S
    assert "pool exhausted" in exhausted.json()["output"]
    assert exhausted.json()["checks"]["database:connections"][0]["status"] == "fail"
    assert (recovered.status_code, recovered.json()["status"]) == (200, "pass")


async def test_reader_connections_kept_between_reads_count_as_free(tmp_path: Path) -> None:
    """SQLite keeps each reader slot's connection checked out between reads: with all of them kept, the probe
    still gets a connection at once and reports none in use."""
    db = Database.from_url(f"sqlite:///{tmp_path / 'app.db'}", sqlite_readers=2)
    async with serve(build_app(db)) as client:
        inside = asyncio.Barrier(2)

        async def read() -> None:
            async with db.read() as session:
                await session.execute(text("SELECT 1"))
                await inside.wait()  # both reader slots at once

        await asyncio.gather(read(), read())
        assert db._read_gate is not None
        assert len(db._read_gate.held) == 2
        ready, took = await timed_get(client, "/health/ready")
    assert (ready.status_code, took < PROBE_TIMEOUT_S) == (200, True)
    connections = ready.json()["checks"]["database:connections"][0]
    assert (connections["status"], connections["observedValue"]) == ("pass", 0)


async def test_two_hundred_concurrent_probes_use_at_most_one_connection(backend_url: str) -> None:
    """200 overlapping ready requests all answer 200 while the pool never has more than one connection out."""
    db = Database.from_url(backend_url)
    # A generous deadline: 200 requests share one event loop, and this test is about connections, not time.
    async with serve(build_app(db, deadline_s=3)) as client:
        pool = db.engines.reader.pool
        pings: list[str] = []
        event.listen(db.engines.reader.sync_engine, "before_cursor_execute", lambda *args: pings.append(args[2]))
        peak, done = 0, False

        async def sample() -> None:
            nonlocal peak
            while not done:
                peak = max(peak, pool.checkedout())  # type: ignore[attr-defined]
                await asyncio.sleep(0)

        sampler = asyncio.create_task(sample())
        gate = asyncio.Barrier(200)

        async def probe() -> httpx.Response:
            await gate.wait()
            return await client.get("/health/ready")

        answers = await asyncio.gather(*(probe() for _ in range(200)))
        done = True
        await sampler
    assert [a.status_code for a in answers] == [200] * 200, answers[0].text
    assert peak == 1  # the probes did use a connection, and only ever one
    assert len([sql for sql in pings if "SELECT" in sql]) < 10  # shared and cached, not one query per request


async def test_migrations_head_fails_behind_and_passes_after_lifespan_migrate(tmp_path: Path) -> None:
    """migrations:head fails while the database is behind the scripts and passes once lifespan(migrate=True) ran."""
    folder = tmp_path / "migrations"
    init(folder, write_alembic_ini=False)
    (folder / "versions" / "a1_things.py").write_text(
        textwrap.dedent(
            '''
            """create things"""
            import sqlalchemy as sa
            from alembic import op

            revision = "a1"
            down_revision = None
            branch_labels = None
            depends_on = None


            def upgrade():
                op.create_table("things", sa.Column("id", sa.Integer, primary_key=True))


            def downgrade():
                op.drop_table("things")
            '''
        )
    )
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'app.db'}", migrations_path=str(folder))
    async with Database(settings) as behind_db:
        behind = await check_health(behind_db, deadline_s=5)  # generous: the first read loads Alembic
    db = Database(settings)
    async with serve(build_app(db, deadline_s=5, migrate=True)) as client:
        ready = await client.get("/health/ready")
    assert behind.status == "fail"
    assert behind.http_status == 503
    assert "behind the migrations" in behind.checks["migrations:head"][0]["output"]
    assert ready.status_code == 200
    assert ready.json()["checks"]["migrations:head"][0] | {"time": None} == {
        "componentId": "app.db",
        "componentType": "datastore",
        "observedValue": "a1",
        "status": "pass",
        "time": None,
    }


async def test_health_without_a_started_database_fails_and_checks_its_arguments(sqlite_url: str) -> None:
    """db.health() on a Database that is not started reports fail with the reason; bad arguments raise ValueError."""
    db = Database.from_url(sqlite_url)
    report = await db.health()
    assert (report.status, report.http_status) == ("fail", 503)
    assert "not started" in (report.output or "")
    assert '"status":"fail"' in report.to_json()
    assert HealthReport(status="warn").http_status == 200
    with pytest.raises(ValueError, match="deadline_s"):
        await check_health(db, deadline_s=0)

"""Functions run in child OS processes by the concurrency tests (spawned, so they must be importable)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine

from dbfoundation import Database


def _result(acks: int, errors: list[str], waits: list[float]) -> dict[str, Any]:
    return {"acks": acks, "errors": errors, "max_wait": max(waits, default=0.0)}


def counter_with_dbfoundation(url: str, barrier: Any, seconds: float, tasks: int, out: Any) -> None:
    """Read-modify-write increments of counter row 1 through db.write() until the time is up."""

    async def main() -> dict[str, Any]:
        acks, errors, waits = 0, [], []
        async with Database.from_url(url) as db:
            await asyncio.to_thread(barrier.wait)
            stop_at = time.monotonic() + seconds

            async def task() -> None:
                nonlocal acks
                while time.monotonic() < stop_at:
                    began = time.monotonic()
                    try:
                        async with db.write() as session:
                            value = await session.scalar(text("SELECT value FROM counter WHERE id = 1"))
                            await session.execute(text("UPDATE counter SET value = :v WHERE id = 1"), {"v": value + 1})
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    acks += 1
                    waits.append(time.monotonic() - began)

            await asyncio.gather(*(task() for _ in range(tasks)))
            runs = db._admission is not None and db._admission.runs  # turns passed within the process
        return {**_result(acks, errors, waits), "runs": runs}

    out.put(asyncio.run(main()))


def counter_the_naive_way(url: str, barrier: Any, seconds: float, tasks: int, out: Any) -> None:
    """The same increments the way services wrote them: WAL + busy_timeout, deferred transactions."""

    async def main() -> dict[str, Any]:
        acks, errors, waits = 0, [], []
        engine = create_async_engine(url, connect_args={"timeout": 5.0})

        @event.listens_for(engine.sync_engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA busy_timeout = 5000")
            cursor.close()

        # SQLAlchemy's documented recipe with SQLite's default transaction mode: BEGIN is DEFERRED.
        @event.listens_for(engine.sync_engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

        await asyncio.to_thread(barrier.wait)
        stop_at = time.monotonic() + seconds

        async def task() -> None:
            nonlocal acks
            while time.monotonic() < stop_at:
                began = time.monotonic()
                try:
                    async with engine.begin() as connection:
                        value = await connection.scalar(text("SELECT value FROM counter WHERE id = 1"))
                        await connection.execute(text("UPDATE counter SET value = :v WHERE id = 1"), {"v": value + 1})
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.001)
                    continue
                acks += 1
                waits.append(time.monotonic() - began)

        await asyncio.gather(*(task() for _ in range(tasks)))
        await engine.dispose()
        return _result(acks, errors, waits)

    out.put(asyncio.run(main()))


def hold_sqlite_write_lock(path: str, seconds: float, ready: Any) -> None:
    """A foreign writer: plain sqlite3, BEGIN IMMEDIATE, hold the lock, commit. Ignores our lock file."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=10)
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("INSERT INTO hits (n) VALUES (-1)")
    ready.set()
    time.sleep(seconds)
    connection.execute("COMMIT")
    connection.close()


def hold_write_slot(url: str, seconds: float, ready: Any) -> None:
    """Another dbfoundation process holding the write slot (flock and BEGIN IMMEDIATE) for a while."""

    async def main() -> None:
        async with Database.from_url(url) as db, db.write() as session:
            await session.execute(text("INSERT INTO hits (n) VALUES (-2)"))
            ready.set()
            await asyncio.sleep(seconds)

    asyncio.run(main())


def submit_when_told(url: str, n: int, units: int, ready: Any, go: Any, out: Any) -> None:
    """Start a Database, say so, and when told, db.submit() rows n*100 + i (i < units) into hits at once."""

    async def main() -> None:
        async with Database.from_url(url) as db:
            ready.set()
            await asyncio.to_thread(go.wait, 60)
            insert = text("INSERT INTO hits VALUES (:n)")
            await asyncio.gather(*(db.submit(insert, {"n": n * 100 + i}) for i in range(units)))
        out.put(n)

    asyncio.run(main())

"""Ceilings: stdlib sqlite3 on one connection per process, and a raw asyncpg pool.

The sqlite3 adapters call SQLite directly on the event-loop thread (blocking, no thread hop).  That is not a
usable design for a service (a lock wait blocks the loop), it is the measure of what SQLite itself costs.
Each request first yields once to the loop (``asyncio.sleep(0)``) so the T tasks take turns.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

from benchmarks.adapters import DUP, OK, Adapter
from benchmarks.scenarios import CHECK_INSERT, COUNTER_ID, EVENT, EVENT_VALUE, INCR, INSERT, READ, Op

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA journal_size_limit=67108864",
    "PRAGMA mmap_size=134217728",
    "PRAGMA cache_size=2000",
)

INSERT_SIGNAL = "INSERT INTO signals (signal_id, payload, received_at) VALUES (?, ?, ?)"
SELECT_SIGNAL = "SELECT id FROM signals WHERE signal_id = ?"
READ_SIGNAL = "SELECT id, signal_id, payload, received_at FROM signals WHERE id = ?"
SELECT_COUNTER = "SELECT value FROM counters WHERE id = ?"
UPDATE_COUNTER = "UPDATE counters SET value = ? WHERE id = ?"
INSERT_EVENT = "INSERT INTO events (k, v) VALUES (?, ?)"


def connect_sqlite(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    for pragma in SQLITE_PRAGMAS:
        # With several processes opening the file at the same moment, a PRAGMA can be refused at once with
        # `database is locked` (no busy wait; seen in 1 of ~40 4-process runs): retry it for up to 5 s.
        for attempt in range(50):
            try:
                conn.execute(pragma)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)
    return conn


def apply_op(conn: sqlite3.Connection, op: Op) -> str:
    """One request's statements, inside a transaction the caller opened (writes) or none (reads)."""
    if op.kind == INSERT:
        try:
            conn.execute(INSERT_SIGNAL, (op.signal_id, op.payload, time.time()))
        except sqlite3.IntegrityError:
            return DUP  # only the statement is undone; the transaction stays usable
        return OK
    if op.kind == CHECK_INSERT:
        if conn.execute(SELECT_SIGNAL, (op.signal_id,)).fetchone() is not None:
            return DUP
        conn.execute(INSERT_SIGNAL, (op.signal_id, op.payload, time.time()))
        return OK
    if op.kind == INCR:
        (value,) = conn.execute(SELECT_COUNTER, (COUNTER_ID,)).fetchone()
        conn.execute(UPDATE_COUNTER, (value + 1, COUNTER_ID))
        return OK
    if op.kind == EVENT:
        conn.execute(INSERT_EVENT, (op.k, EVENT_VALUE))
        return OK
    raise ValueError(op.kind)


class SQLite3Raw(Adapter):
    conn: sqlite3.Connection

    async def setup(self) -> None:
        self.conn = connect_sqlite(self.sqlite_path)

    async def request(self, op: Op) -> str:
        await asyncio.sleep(0)
        conn = self.conn
        if op.kind == READ:
            conn.execute(READ_SIGNAL, (op.row_id,)).fetchone()
            return OK
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = apply_op(conn, op)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    async def teardown(self) -> None:
        self.conn.close()


class SQLite3RawBatched(Adapter):
    """Up to BATCH queued writes per transaction; every request is acknowledged only after COMMIT."""

    BATCH = 100
    conn: sqlite3.Connection

    async def setup(self) -> None:
        self.conn = connect_sqlite(self.sqlite_path)
        self.loop = asyncio.get_running_loop()
        self.pending: list[tuple[Op, asyncio.Future[str]]] = []
        self.scheduled = False

    async def request(self, op: Op) -> str:
        if op.kind == READ:
            await asyncio.sleep(0)
            self.conn.execute(READ_SIGNAL, (op.row_id,)).fetchone()
            return OK
        fut: asyncio.Future[str] = self.loop.create_future()
        self.pending.append((op, fut))
        if len(self.pending) >= self.BATCH:
            self._flush()
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self.scheduled = False
        batch, self.pending = self.pending, []
        if not batch:
            return
        conn = self.conn
        results: list[str] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [apply_op(conn, op) for op, _ in batch]
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    async def teardown(self) -> None:
        self.conn.close()


class AsyncpgRaw(Adapter):
    pool: Any

    async def setup(self) -> None:
        import asyncpg

        self.unique_violation = asyncpg.UniqueViolationError
        self.pool = await asyncpg.create_pool(self.url, min_size=10, max_size=15)

    async def request(self, op: Op) -> str:
        pool = self.pool
        if op.kind == READ:
            await pool.fetchrow("SELECT id, signal_id, payload, received_at FROM signals WHERE id = $1", op.row_id)
            return OK
        if op.kind == INSERT or op.kind == CHECK_INSERT:
            if op.kind == CHECK_INSERT:
                found = await pool.fetchval("SELECT id FROM signals WHERE signal_id = $1", op.signal_id)
                if found is not None:
                    return DUP
            try:
                await pool.execute(
                    "INSERT INTO signals (signal_id, payload, received_at) VALUES ($1, $2, $3)",
                    op.signal_id,
                    op.payload,
                    time.time(),
                )
            except self.unique_violation:
                return DUP
            return OK
        if op.kind == INCR:
            # One atomic statement (the raw-SQL way to increment); the ORM adapters read, then write.
            await pool.execute("UPDATE counters SET value = value + 1 WHERE id = $1", COUNTER_ID)
            return OK
        if op.kind == EVENT:
            await pool.execute("INSERT INTO events (k, v) VALUES ($1, $2)", op.k, EVENT_VALUE)
            return OK
        raise ValueError(op.kind)

    async def teardown(self) -> None:
        await self.pool.close()

"""Where a run writes: a fresh SQLite file or a fresh PostgreSQL database, its schema and the data check.

The schema is created once per run by the parent with the plain driver (same DDL for every implementation,
no PRAGMAs: each implementation applies its own connection settings, so `journal_mode` is whatever that
implementation sets — WAL is persistent in the file once set).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.scenarios import COUNTER_ID, event_key, make_payload, signal_id_for

POSTGRES_ADMIN_URL = os.environ.get("DBF_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

SQLITE_DDL = (
    "CREATE TABLE signals (id INTEGER PRIMARY KEY, signal_id VARCHAR(64) NOT NULL, payload TEXT NOT NULL,"
    " received_at FLOAT NOT NULL, CONSTRAINT uq_signals_signal_id UNIQUE (signal_id))",
    "CREATE TABLE counters (id INTEGER PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE events (id INTEGER PRIMARY KEY, k BIGINT NOT NULL, v TEXT NOT NULL)",
)
POSTGRES_DDL = (
    "CREATE TABLE signals (id BIGSERIAL PRIMARY KEY, signal_id VARCHAR(64) NOT NULL, payload TEXT NOT NULL,"
    " received_at DOUBLE PRECISION NOT NULL, CONSTRAINT uq_signals_signal_id UNIQUE (signal_id))",
    "CREATE TABLE counters (id BIGSERIAL PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE events (id BIGSERIAL PRIMARY KEY, k BIGINT NOT NULL, v TEXT NOT NULL)",
)


def _seed_rows(n: int) -> list[tuple[str, str, float]]:
    import random

    rng = random.Random(7)
    return [(signal_id_for("seed", 0, i), make_payload(rng, signal_id_for("seed", 0, i), i), 0.0) for i in range(n)]


def default_workdir() -> Path:
    return Path(os.environ.get("DBF_BENCH_WORKDIR", tempfile.gettempdir()))


@dataclass
class DataCheck:
    acknowledged: int  # acknowledged new rows / increments
    present: int  # rows (or counter value) found afterwards, excluding seed rows
    missing: int  # acknowledged but not present (must be 0)
    unacknowledged_present: int  # present although the client saw an error (or never got the answer)

    @property
    def ok(self) -> bool:
        return self.missing == 0


class Target:
    backend: str
    url: str  # plain URL: sqlite:///abs/path or postgresql://...

    def setup(self, seed_rows: int) -> None:
        raise NotImplementedError

    def destroy(self) -> None:
        raise NotImplementedError

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def data_check(self, workload: str, tag: str, results: list[dict[str, Any]], seed_rows: int) -> DataCheck:
        if workload == "counter":
            acked = sum(r["acked_incr"] for r in results)
            value = int(self.fetch(f"SELECT value FROM counters WHERE id = {COUNTER_ID}")[0][0])
            return DataCheck(acked, value, max(0, acked - value), max(0, value - acked))
        acked_keys: set[Any]
        present_keys: set[Any]
        if workload == "write-tx":
            acked_keys = {event_key(r["worker"], s) for r in results for s in r["acked_seqs"]}
            present_keys = {int(row[0]) for row in self.fetch("SELECT k FROM events")}
        else:
            acked_keys = {signal_id_for(tag, r["worker"], s) for r in results for s in r["acked_seqs"]}
            present_keys = {row[0] for row in self.fetch("SELECT signal_id FROM signals")}
            present_keys -= {signal_id_for("seed", 0, i) for i in range(seed_rows)}
        return DataCheck(
            len(acked_keys),
            len(present_keys),
            len(acked_keys - present_keys),
            len(present_keys - acked_keys),
        )


class SQLiteTarget(Target):
    backend = "sqlite"

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dbf-bench-", dir=workdir))
        self.path = self.dir / "bench.db"
        self.url = f"sqlite:///{self.path}"

    def setup(self, seed_rows: int) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            for ddl in SQLITE_DDL:
                conn.execute(ddl)
            conn.execute("BEGIN")
            conn.execute("INSERT INTO counters (id, value) VALUES (?, 0)", (COUNTER_ID,))
            if seed_rows:
                conn.executemany(
                    "INSERT INTO signals (signal_id, payload, received_at) VALUES (?, ?, ?)", _seed_rows(seed_rows)
                )
            conn.execute("COMMIT")
        finally:
            conn.close()

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            return list(conn.execute(sql).fetchall())
        finally:
            conn.close()

    def journal_mode(self) -> str:
        return str(self.fetch("PRAGMA journal_mode")[0][0])

    def destroy(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresTarget(Target):
    backend = "postgres"

    def __init__(self) -> None:
        self.name = f"dbf_bench_{uuid.uuid4().hex[:10]}"
        base = POSTGRES_ADMIN_URL.rpartition("/")[0]
        self.url = f"{base}/{self.name}"

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def _setup(self, seed_rows: int) -> None:
        await self._admin(f'CREATE DATABASE "{self.name}"')
        conn = await asyncpg.connect(self.url)
        try:
            for ddl in POSTGRES_DDL:
                await conn.execute(ddl)
            await conn.execute("INSERT INTO counters (id, value) VALUES ($1, 0)", COUNTER_ID)
            if seed_rows:
                await conn.executemany(
                    "INSERT INTO signals (signal_id, payload, received_at) VALUES ($1, $2, $3)", _seed_rows(seed_rows)
                )
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    def setup(self, seed_rows: int) -> None:
        asyncio.run(self._setup(seed_rows))

    def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        async def go() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.url)
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()

        return asyncio.run(go())

    def destroy(self) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def make_target(backend: str, workdir: Path) -> Target:
    return SQLiteTarget(workdir) if backend == "sqlite" else PostgresTarget()


def postgres_version() -> str | None:
    async def go() -> str:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=3)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    try:
        return asyncio.run(go())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None

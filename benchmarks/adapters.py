"""The adapter interface every implementation follows, and the registry of implementations.

An adapter lives inside one worker process.  The parent creates the schema (same DDL for everyone,
`benchmarks.targets`); in the worker the runner calls ``await setup()`` once (connect, start pools),
then ``await request(op)`` from T concurrent asyncio tasks, then ``await teardown()``.

``request`` returns ``"ok"`` for an acknowledged write (or completed read) and ``"dup"`` for a handled
duplicate (a unique violation, or a check-then-insert that found the row).  Anything else it raises; the
runner classifies it (``database is locked`` on its own column).  Implementations import their libraries
lazily so a worker only loads what it runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from benchmarks.scenarios import Op

OK = "ok"
DUP = "dup"


class Adapter:
    """One implementation of the workload, instantiated once per worker process."""

    def __init__(self, url: str, workload: str, variant: str, tasks: int) -> None:
        self.url = url  # plain sqlite:///abs/path or postgresql://user@host/db
        self.workload = workload
        self.variant = variant
        self.tasks = tasks

    async def setup(self) -> None:
        """Connect / start pools; runs before the start barrier."""

    async def request(self, op: Op) -> str:
        raise NotImplementedError

    async def teardown(self) -> None:
        """Close everything; runs after the measured window."""

    def describe(self) -> str:
        return ""

    @property
    def sqlite_path(self) -> str:
        return self.url.removeprefix("sqlite:///")


@dataclass(frozen=True)
class Impl:
    name: str
    module: str
    cls: str
    backends: tuple[str, ...]
    summary: str

    def load(self) -> type[Adapter]:
        cls: type[Adapter] = getattr(importlib.import_module(self.module), self.cls)
        return cls


IMPLS: dict[str, Impl] = {
    i.name: i
    for i in (
        Impl(
            "sqlite3-raw",
            "benchmarks.impl_raw",
            "SQLite3Raw",
            ("sqlite",),
            "stdlib sqlite3, one connection per process, dbfoundation's PRAGMAs, BEGIN IMMEDIATE per request, "
            "called directly on the event-loop thread (blocking): the ceiling",
        ),
        Impl(
            "sqlite3-raw-batched",
            "benchmarks.impl_raw",
            "SQLite3RawBatched",
            ("sqlite",),
            "as sqlite3-raw, but up to 100 queued requests share one transaction (flushed when 100 are queued "
            "or when every ready task has queued its request); each request acknowledged after COMMIT",
        ),
        Impl(
            "usual",
            "benchmarks.impl_sqlalchemy",
            "Usual",
            ("sqlite",),
            "create_async_engine('sqlite+aiosqlite://'), WAL + synchronous=NORMAL in a connect event, default "
            "(deferred, driver-managed) transactions, ORM session per request from async_sessionmaker",
        ),
        Impl(
            "orm-floor",
            "benchmarks.impl_sqlalchemy",
            "ORMFloor",
            ("sqlite",),
            "not a service design: SQLAlchemy's synchronous ORM session per request on stdlib sqlite3 (WAL, "
            "NORMAL), no asyncio layer, blocking the loop; the cost of the ORM itself (per_call, instructions)",
        ),
        Impl(
            "sqlalchemy-asyncpg",
            "benchmarks.impl_sqlalchemy",
            "SQLAlchemyAsyncpg",
            ("postgres",),
            "create_async_engine('postgresql+asyncpg://', pool_size=10, max_overflow=5, pool_pre_ping=True), "
            "ORM session per request",
        ),
        Impl(
            "advanced-alchemy",
            "benchmarks.impl_aa",
            "AdvancedAlchemy",
            ("sqlite", "postgres"),
            "advanced-alchemy SQLAlchemyAsyncConfig with its defaults (no PRAGMAs), BigIntBase model, "
            "SQLAlchemyAsyncRepository on a session per request (auto_commit=True)",
        ),
        Impl(
            "sqlmodel",
            "benchmarks.impl_sqlmodel",
            "SQLModelTutorial",
            ("sqlite", "postgres"),
            "SQLModel tutorial pattern: create_async_engine(url) with no options, "
            "sqlmodel AsyncSession(engine) per request, add + commit + refresh",
        ),
        Impl(
            "asyncpg-raw",
            "benchmarks.impl_raw",
            "AsyncpgRaw",
            ("postgres",),
            "raw asyncpg pool (min 10, max 15), one statement per request where possible: the ceiling",
        ),
        Impl(
            "dbf-write",
            "benchmarks.impl_dbf",
            "DbfWrite",
            ("sqlite", "postgres"),
            "dbfoundation: `async with db.write() as session` per write (ORM session.add / session.get), "
            "db.read() for reads",
        ),
        Impl(
            "dbf-write-core",
            "benchmarks.impl_dbf",
            "DbfWriteCore",
            ("sqlite", "postgres"),
            "dbfoundation: db.write() per write, Core `session.execute(insert(table), params)` instead of the ORM",
        ),
        Impl(
            "dbf-submit",
            "benchmarks.impl_dbf",
            "DbfSubmit",
            ("sqlite", "postgres"),
            "dbfoundation group commit: db.submit(insert(table), params) for inserts, db.submit(fn) for "
            "check-then-insert and read-modify-write, db.read() for reads",
        ),
    )
}

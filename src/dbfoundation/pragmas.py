"""SQLite PRAGMAs: apply them on every new connection, verify them, set WAL once, report them.

The order matters and is SQLite's, not ours: the busy timeout is in force before anything else (it is
the `timeout=` connect argument), and every PRAGMA runs outside a transaction because `foreign_keys`
is silently ignored inside one (sqlite.org/pragma.html#pragma_foreign_keys).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dbfoundation.errors import ConfigurationError, DatabaseUnavailable
from dbfoundation.settings import DatabaseSettings

__all__ = [
    "REPORTED_PRAGMAS",
    "PragmaPlan",
    "apply_pragmas",
    "prepare_sqlite_file",
    "read_pragmas",
    "set_journal_mode_once",
]

_SYNCHRONOUS_CODES = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}
SQLITE_BUSY = 5
SQLITE_LOCKED = 6


class _DBAPIConnection(Protocol):
    isolation_level: str | None

    def cursor(self) -> Any: ...


@dataclass(frozen=True)
class PragmaPlan:
    """The PRAGMAs one connection gets; readers differ from the writer only in `query_only`."""

    journal_mode: str
    synchronous: str
    foreign_keys: bool
    busy_timeout_ms: int
    cache_size: int
    mmap_size: int
    journal_size_limit: int
    query_only: bool
    wal_autocheckpoint: int = 1000  # SQLite's default; 0 on the writer while our checkpointer runs

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, *, reader: bool) -> PragmaPlan:
        return cls(
            journal_mode=settings.sqlite_journal_mode.lower(),
            synchronous=settings.sqlite_synchronous,
            foreign_keys=settings.sqlite_foreign_keys,
            busy_timeout_ms=round(settings.sqlite_busy_timeout * 1000),
            cache_size=settings.sqlite_cache_size,
            mmap_size=settings.sqlite_mmap_size,
            journal_size_limit=settings.sqlite_journal_size_limit,
            query_only=reader,
            # A COMMIT that crosses the threshold would checkpoint (and fsync) while writers queue behind
            # it; with the background checkpointer on, checkpoints happen beside the writer (checkpoint.py).
            wal_autocheckpoint=0 if settings.sqlite_checkpoint_interval > 0 and not reader else 1000,
        )

    def statements(self) -> list[str]:
        # Values are validated ints/literals from DatabaseSettings, so formatting them in is safe.
        return [
            f"PRAGMA busy_timeout = {self.busy_timeout_ms}",
            f"PRAGMA synchronous = {self.synchronous}",
            f"PRAGMA foreign_keys = {'ON' if self.foreign_keys else 'OFF'}",
            f"PRAGMA journal_size_limit = {self.journal_size_limit}",
            f"PRAGMA mmap_size = {self.mmap_size}",
            f"PRAGMA cache_size = {self.cache_size}",
            f"PRAGMA query_only = {'ON' if self.query_only else 'OFF'}",
            f"PRAGMA wal_autocheckpoint = {self.wal_autocheckpoint}",
        ]


_VERIFY_SQL = "SELECT " + ", ".join(  # noqa: S608 - fixed PRAGMA names, no input
    f"(SELECT * FROM pragma_{name}())"  # noqa: S608 - fixed PRAGMA names, no input
    for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout", "query_only")
)


def apply_pragmas(dbapi_connection: _DBAPIConnection, plan: PragmaPlan) -> None:
    """Configure a fresh connection and check that SQLite really took every safety-relevant PRAGMA.

    Runs inside SQLAlchemy's `connect` event. Turning the driver's own transaction handling off is the
    SQLAlchemy-documented recipe: the driver would otherwise emit a deferred BEGIN only before DML,
    and we emit BEGIN (IMMEDIATE on the writer) ourselves.
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for statement in plan.statements():
            cursor.execute(statement)
        cursor.execute(_VERIFY_SQL)
        journal_mode, foreign_keys, synchronous, busy_timeout, query_only = cursor.fetchall()[0]
    finally:
        cursor.close()
    expected = {
        "journal_mode": (plan.journal_mode, str(journal_mode).lower()),
        "foreign_keys": (int(plan.foreign_keys), foreign_keys),
        "synchronous": (_SYNCHRONOUS_CODES[plan.synchronous], synchronous),
        "busy_timeout": (plan.busy_timeout_ms, busy_timeout),
        "query_only": (int(plan.query_only), query_only),
    }
    for name, (want, got) in expected.items():
        if want != got:
            raise ConfigurationError(
                f"DATABASE_SQLITE_{name.upper()}",
                repr(want),
                f"SQLite reports {name}={got!r} on a new connection; another program may have changed the "
                "file's journal mode, or this SQLite build ignores the PRAGMA. Run 'dbf doctor' to see the "
                "PRAGMAs in effect.",
            )


async def prepare_sqlite_file(settings: DatabaseSettings) -> None:
    """Create the file's folder and set its journal mode once (with retry), on a worker thread.

    What every first connection to a SQLite file needs: Database.start(), migrations and the plain-SQL
    runner all begin here.
    """
    await asyncio.to_thread(
        set_journal_mode_once, settings.sqlite_path, settings.sqlite_journal_mode.lower(), settings.sqlite_busy_timeout
    )


def set_journal_mode_once(path: Path, mode: str, busy_timeout_s: float, *, deadline_s: float = 30.0) -> str:
    """Switch the file to `mode` (persistent for WAL) on a short-lived connection, retrying while busy.

    Blocking: call it from a worker thread. Several processes starting together race for the lock this
    needs, and the switch can fail before the busy timeout applies, so it retries until `deadline_s`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    give_up = time.monotonic() + deadline_s
    while True:
        try:
            connection = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise DatabaseUnavailable(
                str(path),
                f"SQLite cannot open the file ({exc.sqlite_errorname})",
                "Check that the folder exists and is writable by this user.",
            ) from exc
        try:
            current = connection.execute("PRAGMA journal_mode").fetchone()[0]
            if str(current).lower() == mode:
                return mode
            result = str(connection.execute(f"PRAGMA journal_mode = {mode}").fetchone()[0]).lower()
            if result == mode:
                return mode
            raise ConfigurationError(
                "DATABASE_SQLITE_JOURNAL_MODE",
                mode.upper(),
                f"SQLite kept journal_mode={result} for {path}; WAL needs a local filesystem that supports "
                "shared memory (not a network share).",
            )
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (SQLITE_BUSY, SQLITE_LOCKED) or time.monotonic() > give_up:
                raise
            time.sleep(random.uniform(0.005, 0.05))  # noqa: S311 - jitter, not cryptography
        finally:
            connection.close()


REPORTED_PRAGMAS = (
    "journal_mode",
    "synchronous",
    "foreign_keys",
    "busy_timeout",
    "cache_size",
    "mmap_size",
    "journal_size_limit",
    "query_only",
    "wal_autocheckpoint",
    "page_size",
)


async def read_pragmas(connection: Any) -> dict[str, Any]:
    """Read the PRAGMAs in effect on an aiosqlite connection, for `dbf doctor` and tests."""
    report: dict[str, Any] = {}
    for name in REPORTED_PRAGMAS:
        async with connection.execute(f"PRAGMA {name}") as cursor:
            row = await cursor.fetchone()
        report[name] = None if row is None else row[0]
    return report

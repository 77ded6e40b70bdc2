"""Plain-SQL migrations over a raw aiosqlite or asyncpg connection, for services without SQLAlchemy models.

`upgrade()` applies the `NNNN_name.sql` files of a folder in version order and records each in the
`dbf_sql_migrations` table (version, name, sha256 checksum, applied_at in UTC, duration_ms, state). Each
file and its version row commit in one transaction, so a crash leaves a file either applied and recorded
or neither. Runs are serialised by the migration lock (`dbfoundation.migrations.lock`), taken before the
applied set is read; a run that finds every file applied with matching checksums returns without it.

A file whose leading comments hold `-- dbf: transaction=false` runs statement by statement outside a
transaction. Its row is written as `dirty` first and marked `applied` on success; if it fails, the row
stays dirty and every later run raises `DirtyMigration` until `repair()` settles it.

No SQLAlchemy is imported: this module works with only aiosqlite and asyncpg installed.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import asyncpg  # type: ignore[import-untyped,unused-ignore]  # asyncpg ships no type hints; asyncpg-stubs adds them

from dbfoundation.errors import ChecksumMismatch, ConfigurationError, DirtyMigration, MigrationError
from dbfoundation.migrations._sql_files import (
    SqlFile,
    Statement,
    line_of_position,
    load_sql_files,
    split_postgres,
    split_sqlite,
)
from dbfoundation.migrations.lock import postgres_migration_lock, sqlite_migration_lock

__all__ = ["VERSION_TABLE", "MigrationStatus", "RepairAction", "repair", "status", "upgrade"]

VERSION_TABLE = "dbf_sql_migrations"
RepairAction = Literal["accept", "forget", "mark-applied"]

_COLUMNS = "version, name, checksum, applied_at, duration_ms, state"
_SELECT = f"SELECT {_COLUMNS} FROM {VERSION_TABLE}"  # noqa: S608  # fixed table and column names
_UPSERT = (
    f"INSERT INTO {VERSION_TABLE} ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) "  # noqa: S608  # fixed names
    "ON CONFLICT (version) DO UPDATE SET name = excluded.name, checksum = excluded.checksum, "
    "applied_at = excluded.applied_at, duration_ms = excluded.duration_ms, state = excluded.state"
)
_DELETE = f"DELETE FROM {VERSION_TABLE} WHERE version = $1"  # noqa: S608  # fixed table name
_CREATE = """CREATE TABLE IF NOT EXISTS {table} (
    version {integer} PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at {timestamp} NOT NULL,
    duration_ms INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('applied', 'dirty'))
)"""


@dataclass(frozen=True)
class MigrationStatus:
    """Where one migration stands: a file in the folder, a row in the version table, or both."""

    version: int
    name: str
    is_applied: bool
    """A row exists and is clean."""
    is_dirty: bool
    """A `transaction=false` file failed halfway; `upgrade()` refuses until `repair()`."""
    checksum_matches: bool | None
    """Whether the file still has the checksum it was applied with; None if not applied or no file."""
    has_file: bool
    applied_at: datetime | None


@dataclass(frozen=True)
class _Row:
    version: int
    name: str
    checksum: str
    applied_at: datetime
    duration_ms: int
    state: str


async def upgrade(connection: Any, folder: str | Path, *, lock_timeout_s: float = 60.0) -> list[str]:
    """Apply every pending `NNNN_name.sql` file of `folder`, in version order; return their file names.

    `connection` is an `aiosqlite.Connection` or `asyncpg.Connection` outside any transaction; on SQLite
    its `isolation_level` is None for the duration (restored afterwards) because the runner issues
    `BEGIN IMMEDIATE` itself. Several processes may call this at once: one applies, the others wait up to
    `lock_timeout_s` seconds for the lock, then find nothing left to do.

    Raises:
        ConfigurationError: the folder is missing, or holds a misnamed or duplicated `.sql` file.
        ChecksumMismatch: an applied file was edited since; nothing is applied.
        DirtyMigration: a `transaction=false` file failed (now or in an earlier run); repair it first.
        MigrationLockTimeout: another migrator held the lock for `lock_timeout_s` seconds.
        MigrationError: a file failed; it was rolled back and not recorded, and later files did not run.
    """
    files = load_sql_files(folder)
    async with _open(connection) as backend:
        if not _pending(files, await backend.read_rows()):
            return []  # fast path: read-only, so replicas starting at head never queue for the lock
        async with backend.lock(lock_timeout_s):
            await backend.ensure_table()
            applied: list[str] = []
            for file in _pending(files, await backend.read_rows()):
                run = backend.apply if file.is_transactional else backend.apply_outside_transaction
                if await run(file):
                    applied.append(file.name)
            return applied


async def status(connection: Any, folder: str | Path) -> list[MigrationStatus]:
    """List every migration known to the folder or the version table, by version; reads only, no lock."""
    files = {file.version: file for file in load_sql_files(folder)}
    async with _open(connection) as backend:
        rows = await backend.read_rows()
    listing: list[MigrationStatus] = []
    for version in sorted(files.keys() | rows.keys()):
        file, row = files.get(version), rows.get(version)
        listing.append(
            MigrationStatus(
                version=version,
                name=file.name if file else row.name if row else str(version),
                is_applied=row is not None and row.state == "applied",
                is_dirty=row is not None and row.state == "dirty",
                checksum_matches=(row.checksum == file.checksum) if row and file else None,
                has_file=file is not None,
                applied_at=row.applied_at if row else None,
            )
        )
    return listing


async def repair(
    connection: Any,
    folder: str | Path,
    version: int,
    *,
    action: RepairAction = "accept",
    lock_timeout_s: float = 60.0,
) -> None:
    """Settle one version's row after a person has checked the database; runs under the migration lock.

    Actions:
        accept: the applied file was edited on purpose; store its current checksum.
        mark-applied: the file's changes are complete (a dirty file finished by hand, or a file applied
            outside the runner); record it as applied with its current checksum.
        forget: delete the row (after undoing a dirty file's changes), so the next upgrade runs it again.

    Raises:
        ConfigurationError: unknown action, or the version has no file/row the action needs.
        MigrationLockTimeout: another migrator held the lock for `lock_timeout_s` seconds.
    """
    if action not in ("accept", "forget", "mark-applied"):
        raise ConfigurationError("action", str(action), "use accept, forget or mark-applied.")
    file = next((f for f in load_sql_files(folder) if f.version == version), None)
    shown = file.prefix if file else f"{version:04d}"
    async with _open(connection) as backend, backend.lock(lock_timeout_s):
        await backend.ensure_table()
        row = (await backend.read_rows()).get(version)
        if action == "forget":
            if row is None:
                raise ConfigurationError("version", shown, f"{VERSION_TABLE} has no row for it; nothing to forget.")
            await backend.execute(_DELETE, version)
            return
        if file is None:
            raise ConfigurationError("version", shown, f"{folder} has no {shown}_*.sql file to take the checksum of.")
        if action == "accept":
            if row is None:
                raise ConfigurationError("version", shown, f"{file.name} was never applied; run upgrade instead.")
            if row.state == "dirty":
                raise ConfigurationError(
                    "version", shown, f"{file.name} is dirty; use mark-applied or forget, not accept."
                )
            await backend.write_row(file, row.state, row.applied_at, row.duration_ms)
            return
        await backend.write_row(file, "applied", datetime.now(UTC), 0)


def _pending(files: Sequence[SqlFile], rows: dict[int, _Row]) -> list[SqlFile]:
    """The files not yet applied, after refusing dirty rows and edited files (nothing runs then)."""
    by_version = {file.version: file for file in files}
    for dirty in sorted((row for row in rows.values() if row.state == "dirty"), key=lambda row: row.version):
        file = by_version.get(dirty.version)
        shown = file.prefix if file else f"{dirty.version:04d}"
        raise DirtyMigration(str(file.path) if file else dirty.name, _dirty_fix(shown))
    for file in files:
        row = rows.get(file.version)
        if row is not None and row.checksum != file.checksum:
            raise ChecksumMismatch(
                str(file.path), row.checksum, file.checksum, f"dbf sql repair --accept {file.prefix}"
            )
    return [file for file in files if file.version not in rows]


def _dirty_fix(shown: str) -> str:
    return (
        f"dbf sql repair --mark-applied {shown} (its changes are now complete), or "
        f"dbf sql repair --forget {shown} (its changes are undone, and the next upgrade reruns it)"
    )


def _failed(file: SqlFile, line: int | None, exc: BaseException) -> MigrationError:
    where = f" at line {line}" if line else ""
    return MigrationError(
        f"{file.path} failed{where}: {exc}. The file was rolled back and not recorded, and later files did "
        "not run; fix the file (or the data it trips on) and run upgrade again."
    )


@contextlib.asynccontextmanager
async def _open(connection: Any) -> AsyncIterator[_Backend]:
    """Wrap a raw driver connection; refuse one inside a transaction (our COMMITs would end it)."""
    if isinstance(connection, aiosqlite.Connection):
        if connection.in_transaction:
            raise MigrationError(_IN_TRANSACTION)
        previous = connection.isolation_level
        # Driver transaction control off: Python's sqlite3 would otherwise BEGIN (deferred) on its own,
        # and a deferred BEGIN that later writes can fail with SQLITE_BUSY whatever busy_timeout is.
        await _set_isolation_level(connection, None)
        try:
            yield _SqliteBackend(connection)
        finally:
            await asyncio.shield(_set_isolation_level(connection, previous))
    elif isinstance(connection, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy):
        if connection.is_in_transaction():
            raise MigrationError(_IN_TRANSACTION)
        yield _PostgresBackend(connection)
    else:
        raise TypeError(f"expected an aiosqlite.Connection or asyncpg.Connection, not {type(connection).__name__}")


async def _set_isolation_level(connection: aiosqlite.Connection, level: str | None) -> None:
    # aiosqlite's isolation_level setter runs on the event loop thread, which sqlite3 refuses
    # (check_same_thread); its _execute runs the assignment on the connection's own thread.
    worker: Any = connection
    await worker._execute(setattr, worker._conn, "isolation_level", level)


_IN_TRANSACTION = (
    "the connection is inside a transaction; the SQL runner commits file by file, so commit or roll back "
    "first (or give it a connection of its own)."
)


class _Backend(abc.ABC):
    """What the runner needs from a driver; the apply steps themselves are shared."""

    driver_error: type[Exception]

    @abc.abstractmethod
    def split(self, text: str) -> list[Statement]:
        """Cut a file into statements for running outside a transaction."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: object) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def lock(self, timeout_s: float) -> AbstractAsyncContextManager[object]: ...

    @abc.abstractmethod
    async def read_rows(self) -> dict[int, _Row]:
        """Every row of the version table ({} when it does not exist yet)."""

    @abc.abstractmethod
    async def ensure_table(self) -> None: ...

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[object]: ...

    @abc.abstractmethod
    async def run_in_transaction(self, file: SqlFile) -> None:
        """Run the whole file inside the open transaction; a failure raises `_failed(...)`."""

    @abc.abstractmethod
    def stored_time(self, moment: datetime) -> object: ...

    async def write_row(self, file: SqlFile, state: str, applied_at: datetime, duration_ms: int) -> None:
        values = (file.version, file.name, file.checksum, self.stored_time(applied_at), duration_ms, state)
        await self.execute(_UPSERT, *values)

    async def is_recorded(self, version: int) -> bool:
        return bool(await self.execute(f"{_SELECT} WHERE version = $1", version))

    async def apply(self, file: SqlFile) -> bool:
        """Run a file and insert its row in one transaction; False if another runner recorded it first."""
        async with self.transaction():
            if await self.is_recorded(file.version):  # re-read inside the transaction
                return False
            started = time.perf_counter()
            await self.run_in_transaction(file)
            await self.write_row(file, "applied", datetime.now(UTC), _ms_since(started))
        return True

    async def apply_outside_transaction(self, file: SqlFile) -> bool:
        """Record the file as dirty, run its statements one by one (each commits), then mark it applied."""
        async with self.transaction():
            if await self.is_recorded(file.version):
                return False
            await self.write_row(file, "dirty", datetime.now(UTC), 0)
        started = time.perf_counter()
        for statement in self.split(file.text):
            try:
                await self.execute(statement.sql)
            except self.driver_error as exc:
                raise DirtyMigration(str(file.path), _dirty_fix(file.prefix)) from exc
        await self.write_row(file, "applied", datetime.now(UTC), _ms_since(started))
        return True


class _SqliteBackend(_Backend):
    driver_error = sqlite3.Error

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.connection = connection

    async def execute(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        # SQLite accepts ?NNN parameters, so one $N spelling of our own statements serves both backends.
        # Only ours carry args: a migration file's text (a '$' in a string literal) is run untouched.
        rows = await self.connection.execute_fetchall(sql.replace("$", "?") if args else sql, args)
        return [tuple(row) for row in rows]

    @contextlib.asynccontextmanager
    async def lock(self, timeout_s: float) -> AsyncIterator[object]:
        databases = await self.execute("PRAGMA database_list")
        path = next((str(row[2]) for row in databases if row[1] == "main"), "")
        if not path:  # in-memory or temporary: no other connection sees it, so nobody to exclude
            yield None
            return
        async with sqlite_migration_lock(path, timeout_s=timeout_s) as lock_path:
            yield lock_path

    async def read_rows(self) -> dict[int, _Row]:
        if not await self.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1", VERSION_TABLE):
            return {}
        return {
            int(row[0]): _Row(int(row[0]), row[1], row[2], datetime.fromisoformat(row[3]), int(row[4]), row[5])
            for row in await self.execute(_SELECT)
        }

    async def ensure_table(self) -> None:
        await self.execute(_CREATE.format(table=VERSION_TABLE, integer="INTEGER", timestamp="TEXT"))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[object]:
        # IMMEDIATE takes SQLite's write lock now, so the applied set read inside cannot go stale.
        await self.execute("BEGIN IMMEDIATE")
        try:
            yield None
        except BaseException:
            # Some errors (SQLITE_FULL, IOERR) already rolled back; shielded so a cancelled runner still does.
            if self.connection.in_transaction:
                await asyncio.shield(self.execute("ROLLBACK"))
            raise
        await self.execute("COMMIT")

    async def run_in_transaction(self, file: SqlFile) -> None:
        # Statement by statement: executescript() would COMMIT first and end our transaction.
        for statement in split_sqlite(file.text):
            try:
                await self.execute(statement.sql)
            except sqlite3.Error as exc:
                raise _failed(file, statement.line, exc) from exc

    def stored_time(self, moment: datetime) -> object:
        return moment.isoformat()

    def split(self, text: str) -> list[Statement]:
        return split_sqlite(text)


class _PostgresBackend(_Backend):
    driver_error = asyncpg.PostgresError

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def execute(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        if not args:
            # The simple query protocol: a file's text may hold many statements.
            await self.connection.execute(sql)
            return []
        return [tuple(record) for record in await self.connection.fetch(sql, *args)]

    def lock(self, timeout_s: float) -> AbstractAsyncContextManager[object]:
        return postgres_migration_lock(self.connection, timeout_s=timeout_s)

    async def read_rows(self) -> dict[int, _Row]:
        if not await self.connection.fetchval("SELECT to_regclass($1) IS NOT NULL", VERSION_TABLE):
            return {}
        return {
            int(row[0]): _Row(int(row[0]), row[1], row[2], row[3], int(row[4]), row[5])
            for row in await self.connection.fetch(_SELECT)
        }

    async def ensure_table(self) -> None:
        # Checked first: CREATE TABLE IF NOT EXISTS needs CREATE on the schema even when the table exists.
        if not await self.connection.fetchval("SELECT to_regclass($1) IS NOT NULL", VERSION_TABLE):
            await self.execute(_CREATE.format(table=VERSION_TABLE, integer="BIGINT", timestamp="TIMESTAMPTZ"))

    def transaction(self) -> AbstractAsyncContextManager[object]:
        transaction: AbstractAsyncContextManager[object] = self.connection.transaction()
        return transaction

    async def run_in_transaction(self, file: SqlFile) -> None:
        try:
            await self.execute(file.text)
        except asyncpg.PostgresError as exc:
            position = getattr(exc, "position", None)
            line = line_of_position(file.text, int(position)) if position else None
            raise _failed(file, line, exc) from exc

    def stored_time(self, moment: datetime) -> object:
        return moment

    def split(self, text: str) -> list[Statement]:
        return split_postgres(text)


def _ms_since(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)

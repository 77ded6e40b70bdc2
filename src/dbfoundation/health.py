"""Readiness: one cheap query with its own deadline, pool use, file sizes and migration state as health+json.

The report follows draft-inadarei-api-health-check-06 (`application/health+json`): `status` is pass, warn
or fail (HTTP 200, 200, 503) and `checks` is keyed `component:measurement`. It costs the same on a 10 MB and
a 10 GB file: the probe runs `SELECT 1` (PostgreSQL) or `SELECT 1 FROM sqlite_schema LIMIT 1` (SQLite) on a
reader connection, never the write slot, never a table scan or `integrity_check` (seconds on a large file;
run `dbf integrity` for those). Sizes come from `os.stat`, not SQL.

Probes must not starve the app: one probe is in flight per Database and concurrent callers share it, its
result is reused for `max_age_s` (1 s), and the migration state (it changes only on deploy) is re-read at
most every 30 s. No URL, host or password ever appears in a report.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from dbfoundation.driver_errors import translate
from dbfoundation.errors import DatabaseUnavailable, SessionStateError
from dbfoundation.health_report import HEALTH_MEDIA_TYPE, HealthReport, HealthStatus, check_entry, report_of, timestamp
from dbfoundation.session import run_to_completion

if TYPE_CHECKING:
    from dbfoundation.database import Database

__all__ = ["HEALTH_MEDIA_TYPE", "HealthReport", "HealthStatus", "check_health"]

MIGRATION_STATE_MAX_AGE_S = 30.0
"""Seconds a migration state read is reused: it changes only when a deploy migrates."""
WAL_WARN_FACTOR = 4
"""The WAL warns past this many times DATABASE_SQLITE_JOURNAL_SIZE_LIMIT (checkpoints are not keeping up)."""

_DATABASE_SHARE = 0.8  # of the deadline for the queries; the rest is left for building and sending the answer
# One statement, one driver hop: touching sqlite_schema reads page 1 (so the file is really readable), and the
# journal mode comes with it. A deferred read transaction never waits for the writer in WAL mode.
_SQLITE_PING = text("SELECT (SELECT 1 FROM sqlite_schema LIMIT 1), (SELECT journal_mode FROM pragma_journal_mode)")
_POSTGRES_PING = text("SELECT 1")
logger = logging.getLogger("dbfoundation.health")


class _MigrationState(Protocol):
    current: tuple[str, ...]
    heads: tuple[str, ...]
    is_at_head: bool
    is_behind: bool
    is_ahead: bool


_MigrationStateReader = Callable[["Database"], Awaitable[_MigrationState | None]]


class _Probe:
    """Per-Database probe state: the one probe in flight, the last report, the cached migration state."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.in_flight: asyncio.Task[HealthReport] | None = None
        self.report: HealthReport | None = None
        self.finished_at = 0.0
        self.migrations: _MigrationState | None = None
        self.migrations_read_at: float | None = None
        self.migrations_reading: asyncio.Task[_MigrationState | None] | None = None

    def store_migrations(self, task: asyncio.Task[_MigrationState | None]) -> None:
        if self.migrations_reading is task:
            self.migrations_reading = None
        if task.cancelled() or task.exception() is not None:  # retried by the next probe
            return
        self.migrations, self.migrations_read_at = task.result(), self.loop.time()

    def finish(self, task: asyncio.Task[HealthReport]) -> None:
        if self.in_flight is task:
            self.in_flight = None
        if task.cancelled() or task.exception() is not None:  # exception() also marks it retrieved
            return
        report = task.result()
        if self.report is not None and self.report.status != report.status:
            level = logging.WARNING if report.status == "fail" else logging.INFO
            logger.log(level, "readiness changed from %s to %s: %s", self.report.status, report.status, report.output)
        self.report, self.finished_at = report, self.loop.time()


_probes: weakref.WeakKeyDictionary[Database, _Probe] = weakref.WeakKeyDictionary()


async def check_health(db: Database, *, deadline_s: float = 0.5, max_age_s: float = 1.0) -> HealthReport:
    """Report whether `db` answers one cheap query, with pool use, file sizes and migration state.

    Answers within `deadline_s` seconds whatever the database does: a database that does not answer, a pool
    with no free connection or a Database that is not started gives `fail` with an `output` reason. At most
    one probe runs per Database; callers that arrive meanwhile share its result, and a result younger than
    `max_age_s` seconds is returned as is, so a burst of probes costs one connection for one query.

    Args:
        db: the Database to check; it need not be started (that is reported as fail).
        deadline_s: seconds the whole check may take; keep it below the prober's own timeout (1 s in
            Kubernetes by default).
        max_age_s: seconds a finished probe's report is reused.

    Raises:
        ValueError: `deadline_s` is not positive or `max_age_s` is negative.
    """
    if deadline_s <= 0:
        raise ValueError(f"deadline_s must be positive, got {deadline_s!r}")
    if max_age_s < 0:
        raise ValueError(f"max_age_s must not be negative, got {max_age_s!r}")
    loop = asyncio.get_running_loop()
    probe = _probes.get(db)
    if probe is None or probe.loop is not loop:
        probe = _probes[db] = _Probe(loop)
    if probe.report is not None and probe.in_flight is None and loop.time() - probe.finished_at < max_age_s:
        return probe.report
    task = probe.in_flight
    if task is None:
        task = loop.create_task(_run_probe(db, probe, deadline_s), name="dbfoundation-health")
        task.add_done_callback(probe.finish)
        probe.in_flight = task
    try:
        async with asyncio.timeout(deadline_s):
            # shield: a caller that gives up must not cancel the probe the other callers wait for.
            return await asyncio.shield(task)
    except TimeoutError:
        return _unanswered(db, f"the health check did not finish within {deadline_s * 1000:.0f} ms")


async def _run_probe(db: Database, probe: _Probe, deadline_s: float) -> HealthReport:
    try:
        return await _probe_checks(db, probe, deadline_s)
    except Exception as exc:  # a report, never an exception: a probe must answer
        logger.warning("the health check itself failed", exc_info=True)
        return _unanswered(db, f"the health check failed ({type(exc).__name__})")


async def _probe_checks(db: Database, probe: _Probe, deadline_s: float) -> HealthReport:
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + deadline_s * _DATABASE_SHARE
    if db.state != "started":
        fix = "start it in the app's lifespan" if db.state == "new" else "the service is shutting down"
        return _unanswered(db, f"the Database is {'not started' if db.state == 'new' else 'stopped'}; {fix}")
    engine = db.engines.reader
    checks: dict[str, list[dict[str, Any]]] = {}
    component = _component_id(db)
    now = timestamp()

    ping_output: str | None = None
    journal_mode: str | None = None
    try:
        async with asyncio.timeout_at(deadline):
            journal_mode = await _ping(engine, sqlite=db.backend == "sqlite")
    except TimeoutError:
        ping_output = f"the database did not answer within {(deadline - started) * 1000:.0f} ms"
        if _pool_is_exhausted(db, engine):
            ping_output = f"no pooled connection was free within {(deadline - started) * 1000:.0f} ms (pool exhausted)"
    except Exception as exc:
        ping_output = _describe_failure(exc, db)
    elapsed_ms = round((loop.time() - started) * 1000, 3)
    checks["database:responseTime"] = [
        check_entry(component, "datastore", "fail" if ping_output else "pass", elapsed_ms, "ms", now, ping_output)
    ]
    checks["database:connections"] = [_connections_entry(db, engine, component, now, ping_output)]

    migrations = await _migrations_entry(db, probe, component, now, deadline, answered=ping_output is None)
    if migrations is not None:
        checks["migrations:head"] = [migrations]

    if db.backend == "sqlite":
        try:
            async with asyncio.timeout_at(max(deadline, loop.time() + 0.05)):
                file_bytes, wal_bytes = await asyncio.to_thread(_file_sizes, db.settings.sqlite_path)
        except TimeoutError:
            file_bytes, wal_bytes = None, None
            checks["sqlite:fileSize"] = [
                check_entry(
                    component, "datastore", "fail", None, "bytes", now, "the file system did not answer os.stat"
                )
            ]
        else:
            checks.update(_sqlite_file_checks(db, component, now, file_bytes, wal_bytes))
        if journal_mode is not None:
            wanted = db.settings.sqlite_journal_mode.lower()
            mode_output = (
                None
                if journal_mode == wanted
                else f"journal_mode is {journal_mode}, DATABASE_SQLITE_JOURNAL_MODE asks for {wanted}"
            )
            checks["sqlite:journalMode"] = [
                check_entry(
                    component, "datastore", "warn" if mode_output else "pass", journal_mode, None, now, mode_output
                )
            ]
    return report_of(checks)


async def _ping(engine: AsyncEngine, *, sqlite: bool) -> str | None:
    """Run the cheap query on a reader connection; return the journal mode on SQLite."""
    connection = await engine.connect()
    try:
        if sqlite:
            row = (await connection.execute(_SQLITE_PING)).one()
            return str(row[1]).lower()
        await connection.execute(_POSTGRES_PING)
        return None
    finally:
        # Closing returns the connection to the pool; it must finish even when the deadline cancels us, or
        # the connection leaks out of the app's pool.
        await run_to_completion(connection.close)


def _pool_is_exhausted(db: Database, engine: AsyncEngine) -> bool:
    in_use, capacity = _pool_use(db, engine)
    return in_use is not None and in_use >= capacity


def _pool_use(db: Database, engine: AsyncEngine) -> tuple[int | None, int]:
    settings = db.settings
    capacity = settings.sqlite_readers if db.backend == "sqlite" else settings.pool_size + settings.max_overflow
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return None, capacity
    return pool.checkedout() - db._idle_readers(), capacity  # held for the next read: not in use


def _connections_entry(
    db: Database, engine: AsyncEngine, component: str, now: str, ping_output: str | None
) -> dict[str, Any]:
    in_use, capacity = _pool_use(db, engine)
    status: HealthStatus = "pass"
    output = None
    if in_use is not None and in_use >= capacity:
        # Exhausted while the probe waited: not ready. Saturated but the probe still got one: busy, not down.
        status = "fail" if ping_output is not None else "warn"
        output = f"all {capacity} pooled connections are in use; requests queue for DATABASE_POOL_TIMEOUT"
    return check_entry(component, "datastore", status, in_use, "connections", now, output)


async def _migrations_entry(
    db: Database, probe: _Probe, component: str, now: str, deadline: float, *, answered: bool
) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    stale = probe.migrations_read_at is None or loop.time() - probe.migrations_read_at >= MIGRATION_STATE_MAX_AGE_S
    unread: str | None = None
    if stale and answered:
        task = probe.migrations_reading
        if task is None:
            # Its own task, never cancelled halfway: it opens and disposes a short-lived engine, and a read that
            # outlives this probe's deadline still lands in the cache for the next one.
            task = loop.create_task(_read_migration_state(db), name="dbfoundation-health-migrations")
            task.add_done_callback(probe.store_migrations)
            probe.migrations_reading = task
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(task)
        except TimeoutError:
            pass  # still reading (the first read loads Alembic): it lands in the cache for the next probe
        except Exception as exc:
            unread = f"the migration state could not be read: {_describe_failure(exc, db)}"
    if probe.migrations_read_at is None:  # never read: report why, or nothing while unknown
        return None if unread is None else check_entry(component, "datastore", "warn", None, None, now, unread)
    state = probe.migrations
    if state is None:  # the project has no migrations
        return None
    at, heads = ",".join(state.current) or "(none)", ",".join(state.heads) or "(none)"
    status: HealthStatus
    if state.is_behind:
        status, output = "fail", f"the database is behind the migrations (at {at}, head {heads}); run: dbf upgrade"
    elif state.is_ahead:
        status, output = (
            "warn",
            f"the database is ahead of this code's migrations (at {at}, head {heads}): an older release is "
            "running against a newer schema, as during a rolling deploy",
        )
    elif state.is_at_head:
        status, output = "pass", None
    else:
        status, output = "warn", f"the database is not at the migrations head (at {at}, head {heads})"
    if unread is not None:  # the cached state still stands, but say that it could not be refreshed
        status, output = ("warn" if status == "pass" else status), (f"{output}; {unread}" if output else unread)
    return check_entry(component, "datastore", status, at, None, now, output)


async def _read_migration_state(db: Database) -> _MigrationState | None:
    """The migration state, or None when the project has no migrations (or this build cannot read them)."""
    module = sys.modules.get("dbfoundation.migrations")
    if module is None:  # the first import loads Alembic: keep it off the event loop
        module = await asyncio.to_thread(importlib.import_module, "dbfoundation.migrations")
    reader = getattr(module, "migration_state", None)
    if not callable(reader):
        return None
    return await cast("_MigrationStateReader", reader)(db)


def _file_sizes(path: Path) -> tuple[int | None, int | None]:
    def size(file: Path) -> int | None:
        try:
            return os.stat(file).st_size
        except FileNotFoundError:
            return None

    return size(path), size(path.with_name(path.name + "-wal"))


def _sqlite_file_checks(
    db: Database, component: str, now: str, file_bytes: int | None, wal_bytes: int | None
) -> dict[str, list[dict[str, Any]]]:
    if file_bytes is None:
        file_entry = check_entry(
            component,
            "datastore",
            "fail",
            None,
            "bytes",
            now,
            "the database file does not exist (deleted or moved while the service runs); restore it and restart",
        )
    else:
        file_entry = check_entry(component, "datastore", "pass", file_bytes, "bytes", now, None)
    limit = db.settings.sqlite_journal_size_limit
    wal_output = None
    if wal_bytes is not None and limit > 0 and wal_bytes > WAL_WARN_FACTOR * limit:
        wal_output = (
            f"the WAL is {wal_bytes} bytes, over {WAL_WARN_FACTOR}x DATABASE_SQLITE_JOURNAL_SIZE_LIMIT: "
            "long-running reads keep checkpoints from resetting it"
        )
    wal_entry = check_entry(
        component, "datastore", "warn" if wal_output else "pass", wal_bytes or 0, "bytes", now, wal_output
    )
    return {"sqlite:walSize": [wal_entry], "sqlite:fileSize": [file_entry]}


def _describe_failure(exc: BaseException, db: Database) -> str:
    """Why a query failed, in words safe to publish: never the URL, the host or the driver's message."""
    typed = exc if isinstance(exc, DatabaseUnavailable) else translate(exc, where=db.settings.masked_url)
    if isinstance(typed, DatabaseUnavailable):
        return typed.reason
    if isinstance(exc, SessionStateError):
        return f"the Database is {exc.state}"
    return f"the query failed ({type(typed or exc).__name__})"


def _component_id(db: Database) -> str:
    """The database's name (SQLite: the file name), never its host, user or password."""
    if db.backend == "sqlite":
        return db.settings.sqlite_path.name
    return db.settings.async_url.database or "postgresql"


def _unanswered(db: Database, reason: str) -> HealthReport:
    entry = check_entry(_component_id(db), "datastore", "fail", None, "ms", timestamp(), reason)
    return report_of({"database:responseTime": [entry]})

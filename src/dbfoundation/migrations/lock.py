"""The migration lock: one migrator per database at a time, across tasks, threads and processes.

- SQLite: an exclusive `flock` on the sidecar file `<database>-migratelock` (the write path's
  `<database>-writelock` is a different lock). The holder writes its pid, host and start time into the
  file so a waiter that gives up can say who holds it. The kernel drops the lock when the holder's process
  dies, `kill -9` included. Sidecar locks coordinate processes on one machine only: two containers that
  see the file through different filesystems do not exclude each other.
- PostgreSQL: a *session* advisory lock, polled with `pg_try_advisory_lock`, on the connection the caller
  passes (give it a dedicated, direct one: a transaction-mode pooler such as PgBouncer hands the session
  to someone else). The key is derived from the database name, because advisory locks are cluster-wide
  and two databases on one server must not wait for each other. The server drops the lock when the
  session ends, so a crashed migrator cannot leave it behind.
- Both first take a process-wide `threading.Lock` per lock identity, so two threads (each with its own
  event loop) or two tasks in one process also take turns.

Every wait is bounded: past `timeout_s` seconds the waiter raises `MigrationLockTimeout` naming the lock
and, where it can be found, the holder. No wait blocks the event loop: lock attempts never block and the
waiter sleeps between them with `asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # asyncpg ships no type hints; asyncpg-stubs adds them

from dbfoundation.errors import MigrationLockTimeout

__all__ = [
    "LOCK_FILE_SUFFIX",
    "postgres_lock_key",
    "postgres_migration_lock",
    "sqlite_lock_path",
    "sqlite_migration_lock",
]

LOCK_FILE_SUFFIX = "-migratelock"

_FIRST_POLL_S = 0.005
_SQLITE_MAX_POLL_S = 0.05
_POSTGRES_POLL_S = 0.05
_KEY_NAMESPACE = b"dbfoundation.migrations.lock\x00"

_registry_guard = threading.Lock()
_process_locks: dict[str, threading.Lock] = {}
_process_holders: dict[str, str] = {}


def sqlite_lock_path(database: str | os.PathLike[str]) -> Path:
    """The sidecar lock file of a SQLite database: its real path (symlinks resolved) + `-migratelock`.

    Resolving symlinks makes two processes that open one database through different links share a lock.
    """
    return Path(os.path.realpath(database) + LOCK_FILE_SUFFIX)


def postgres_lock_key(database_name: str) -> int:
    """The advisory-lock key of one database: a signed 64-bit number stable across processes and versions.

    The first 8 bytes of sha256(namespace + name), so other applications' advisory locks (usually small
    integers) and other databases on the same server do not collide with ours.
    """
    digest = hashlib.sha256(_KEY_NAMESPACE + database_name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.asynccontextmanager
async def sqlite_migration_lock(database: str | os.PathLike[str], *, timeout_s: float = 60.0) -> AsyncIterator[Path]:
    """Hold the migration lock of a SQLite database file for the body of the `async with`; yield its path.

    Waits at most `timeout_s` seconds (polling every 5-50 ms), then raises. The lock file is created next
    to the database and left in place afterwards: deleting a lock file races with a process that has just
    opened it. Cancelling the waiter or the body releases everything taken so far.

    Raises:
        MigrationLockTimeout: another task, thread or process held the lock for `timeout_s` seconds.
    """
    path = sqlite_lock_path(database)
    started = time.monotonic()
    deadline = started + timeout_s
    async with _process_lock(f"sqlite:{path}", str(path), started, deadline):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            acquired = await _poll(lambda: _try_flock(fd), deadline, _SQLITE_MAX_POLL_S)
            if not acquired:
                raise MigrationLockTimeout(str(path), time.monotonic() - started, _read_file_holder(path))
            try:
                _write_file_holder(fd)
                yield path
            finally:
                # A stale name in the file would mislead the next waiter's error message.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextlib.asynccontextmanager
async def postgres_migration_lock(connection: Any, *, timeout_s: float = 60.0) -> AsyncIterator[int]:
    """Hold the migration lock of the connection's database for the body of the `async with`; yield its key.

    `connection` is an `asyncpg.Connection`; the lock is a session advisory lock on it, so it outlives
    transactions committed in the body (files that run outside a transaction included). Polls every
    50 ms for at most `timeout_s` seconds. It is released when the body ends; if the release itself fails
    (the body left the session unusable) the connection is terminated, because a session lock nobody can
    release would block every later migration until the session ended anyway.

    Raises:
        MigrationLockTimeout: another session held the lock for `timeout_s` seconds; the message names
            its backend pid, application_name and client address.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    row = await connection.fetchrow(
        "SELECT current_database(), coalesce(host(inet_server_addr()), 'local') || ':' || current_setting('port')"
    )
    database, server = str(row[0]), str(row[1])
    key = postgres_lock_key(database)
    lock_name = f"pg_advisory_lock({key}) of database {database}"
    async with _process_lock(f"postgres:{server}/{database}", lock_name, started, deadline):
        acquired = await _poll(lambda: _try_advisory_lock(connection, key), deadline, _POSTGRES_POLL_S)
        if not acquired:
            holder = await _advisory_lock_holder(connection, key)
            raise MigrationLockTimeout(lock_name, time.monotonic() - started, holder)
        try:
            yield key
        finally:
            await _release_advisory_lock(connection, key)


async def _poll(attempt: Callable[[], Awaitable[bool] | bool], deadline: float, max_poll_s: float) -> bool:
    """Call `attempt` until it returns True (-> True) or the deadline passes (-> False); at least once."""
    delay = _FIRST_POLL_S
    while True:
        result = attempt()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, max_poll_s)


@contextlib.asynccontextmanager
async def _process_lock(identity: str, lock_name: str, started: float, deadline: float) -> AsyncIterator[None]:
    """Hold this process's threading.Lock for `identity`, polled so that no event loop is blocked."""
    with _registry_guard:
        lock = _process_locks.setdefault(identity, threading.Lock())
    # Polling (not to_thread(lock.acquire)) keeps cancellation clean: a cancelled waiter owns nothing.
    if not await _poll(lambda: lock.acquire(blocking=False), deadline, _SQLITE_MAX_POLL_S):
        raise MigrationLockTimeout(lock_name, time.monotonic() - started, _process_holders.get(identity))
    try:
        _process_holders[identity] = f"{_describe_self()} (thread {threading.current_thread().name})"
        yield
    finally:
        _process_holders.pop(identity, None)
        lock.release()


def _describe_self() -> str:
    since = datetime.now(UTC).isoformat(timespec="seconds")
    return f"pid {os.getpid()} on {socket.gethostname()} since {since}"


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _write_file_holder(fd: int) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Only informs a waiter's error message, so a full disk must not fail the migration.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)


def _read_file_holder(path: Path) -> str | None:
    try:
        record = json.loads(path.read_text())
        return f"pid {int(record['pid'])} on {record['host']} since {record['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        # Empty while the holder is between taking the lock and writing its name.
        return None


async def _try_advisory_lock(connection: Any, key: int) -> bool:
    attempt = asyncio.ensure_future(connection.fetchval("SELECT pg_try_advisory_lock($1)", key))
    try:
        return bool(await asyncio.shield(attempt))
    except asyncio.CancelledError:
        # The server may have granted the lock just as we stopped waiting; give it back so that a
        # cancelled waiter leaves nothing held on the caller's connection.
        with contextlib.suppress(Exception):
            if await attempt:
                await connection.fetchval("SELECT pg_advisory_unlock($1)", key)
        raise


async def _release_advisory_lock(connection: Any, key: int) -> None:
    if connection.is_closed():
        return  # the session is gone, and the server released its locks with it
    release = asyncio.ensure_future(connection.fetchval("SELECT pg_advisory_unlock($1)", key))
    try:
        await asyncio.shield(release)
    except asyncio.CancelledError:
        # Finish the release the caller no longer waits for; otherwise the session keeps the lock.
        with contextlib.suppress(Exception):
            await release
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        connection.terminate()


async def _advisory_lock_holder(connection: Any, key: int) -> str | None:
    # A bigint advisory key shows in pg_locks as classid = high 32 bits, objid = low 32 bits, objsubid = 1.
    row = await connection.fetchrow(
        """
        SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start
        FROM pg_locks AS l JOIN pg_stat_activity AS a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
        """,
        (key >> 32) & 0xFFFFFFFF,
        key & 0xFFFFFFFF,
    )
    if row is None:
        return None
    pid, application, client, since = row
    client_text = client or "local socket"
    since_text = since.astimezone(UTC).isoformat(timespec="seconds") if since else "unknown"
    return f"PostgreSQL backend pid {pid} (application_name {application!r}, client {client_text}, since {since_text})"

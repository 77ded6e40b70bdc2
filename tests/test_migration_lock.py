"""The migration lock: bounded waits naming the holder, release on crash and cancel, per-database keys, threads."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from _sql_runner_helpers import (
    CHILD_APPLICATION_NAME,
    fetch_all,
    is_sqlite,
    kill_hard,
    raw_connection,
    sqlite_path,
    start_child,
)
from _waiting import wait_for_file
from conftest import create_postgres_database, drop_postgres_database
from dbfoundation.errors import MigrationLockTimeout
from dbfoundation.migrations.lock import (
    postgres_lock_key,
    postgres_migration_lock,
    sqlite_lock_path,
    sqlite_migration_lock,
)


@asynccontextmanager
async def actor(url: str) -> AsyncIterator[Any]:
    """What one migrator needs to take the lock: nothing on SQLite, its own connection on PostgreSQL."""
    if is_sqlite(url):
        yield None
        return
    async with raw_connection(url) as connection:
        yield connection


def migration_lock(url: str, connection: Any, timeout_s: float) -> AbstractAsyncContextManager[object]:
    if is_sqlite(url):
        return sqlite_migration_lock(sqlite_path(url), timeout_s=timeout_s)
    return postgres_migration_lock(connection, timeout_s=timeout_s)


async def lock_is_free(url: str) -> bool:
    """Whether a fresh migrator gets the lock within half a second."""
    async with actor(url) as connection:
        try:
            async with migration_lock(url, connection, timeout_s=0.5):
                return True
        except MigrationLockTimeout:
            return False


async def hold_in_child(url: str, tmp_path: Path) -> Any:
    """Start a process that takes the lock and keeps it until it is killed; return it once it holds it."""
    ready = tmp_path / f"holder-{time.monotonic_ns()}"
    child = start_child("hold-lock", url, str(ready))
    await wait_for_file(ready, child)
    return child


async def test_lock_timeout_names_the_holding_process(backend_url: str, tmp_path: Path) -> None:
    """A second migrator gives up after its timeout with MigrationLockTimeout naming the lock and the holder."""
    child = await hold_in_child(backend_url, tmp_path)
    try:
        async with actor(backend_url) as connection:
            with pytest.raises(MigrationLockTimeout) as caught:
                async with migration_lock(backend_url, connection, timeout_s=0.3):
                    pytest.fail("the lock was granted while another process held it")
        error = caught.value
        assert error.waited_s >= 0.3
        assert error.holder is not None
        if is_sqlite(backend_url):
            assert error.lock == str(sqlite_lock_path(sqlite_path(backend_url)))
            assert f"pid {child.pid} on " in error.holder
        else:
            [(backend_pid,)] = await fetch_all(
                backend_url,
                "SELECT pid FROM pg_stat_activity "
                f"WHERE application_name = '{CHILD_APPLICATION_NAME}' AND datname = current_database()",
            )
            assert f"pid {backend_pid} " in error.holder
            assert f"application_name '{CHILD_APPLICATION_NAME}'" in error.holder
            assert "client 127.0.0.1" in error.holder
            assert str(postgres_lock_key(backend_url.rpartition("/")[2])) in error.lock
        assert error.holder in str(error)
    finally:
        kill_hard(child)


async def test_kill_9_of_the_holder_releases_the_lock(backend_url: str, tmp_path: Path) -> None:
    """SIGKILL of the process holding the lock frees it (kernel or server cleanup), so the next migrator gets it."""
    child = await hold_in_child(backend_url, tmp_path)
    try:
        assert not await lock_is_free(backend_url)
    finally:
        kill_hard(child)
    async with actor(backend_url) as connection, migration_lock(backend_url, connection, timeout_s=10):
        pass


@pytest.mark.postgres
async def test_postgres_locks_of_two_databases_do_not_wait_for_each_other(postgres_url: str, tmp_path: Path) -> None:
    """While another process holds database A's lock, database B's lock is granted at once (same server)."""
    other_url = await asyncio.to_thread(create_postgres_database)  # it runs its own event loop
    try:
        child = await hold_in_child(postgres_url, tmp_path)
        try:
            a, b = postgres_url.rpartition("/")[2], other_url.rpartition("/")[2]
            async with actor(other_url) as connection, migration_lock(other_url, connection, timeout_s=0.5):
                [(held,)] = await fetch_all(
                    postgres_url,
                    "SELECT count(*) FROM pg_locks AS l JOIN pg_database AS d ON d.oid = l.database "
                    f"WHERE l.locktype = 'advisory' AND l.granted AND d.datname IN ('{a}', '{b}')",
                )
                assert held == 2  # both databases' locks at the same time
            assert not await lock_is_free(postgres_url)  # control: A's own lock does make a migrator wait
        finally:
            kill_hard(child)
    finally:
        await asyncio.to_thread(drop_postgres_database, other_url)


def test_two_threads_in_one_process_take_turns(backend_url: str) -> None:
    """Four threads, each with its own event loop, asked for the lock together and held it one at a time."""
    gate = threading.Barrier(4)
    asked: list[float] = []
    held: list[tuple[float, float]] = []

    async def migrate() -> None:
        async with actor(backend_url) as connection:
            gate.wait()  # all four threads are connected; ask together
            asked.append(time.monotonic())
            async with migration_lock(backend_url, connection, timeout_s=10):
                began = time.monotonic()
                await asyncio.sleep(0.1)
                held.append((began, time.monotonic()))

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(asyncio.run, migrate()) for _ in range(4)]:
            future.result()
    first_release = min(end for _, end in held)
    assert all(t < first_release for t in asked)  # they really overlapped
    held.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(held))


def test_a_waiting_thread_names_the_holding_thread(backend_url: str) -> None:
    """In one process the in-process lock answers first, so a timed-out thread names the thread holding it."""
    holding = threading.Event()
    done = threading.Event()

    async def hold() -> None:
        async with actor(backend_url) as connection, migration_lock(backend_url, connection, timeout_s=5):
            holding.set()
            await asyncio.to_thread(done.wait, 10)

    async def wait() -> MigrationLockTimeout:
        async with actor(backend_url) as connection:
            with pytest.raises(MigrationLockTimeout) as caught:
                async with migration_lock(backend_url, connection, timeout_s=0.2):
                    pass
            return caught.value

    holder = threading.Thread(target=asyncio.run, args=(hold(),), name="holder-thread")
    holder.start()
    try:
        assert holding.wait(10)
        error = asyncio.run(wait())
    finally:
        done.set()
        holder.join(10)
    assert error.holder is not None
    assert "(thread holder-thread)" in error.holder


async def test_cancelling_the_holder_and_a_waiter_releases_the_lock(backend_url: str) -> None:
    """Tasks cancelled while holding or while waiting leave the lock free, with their connections still open."""
    async with actor(backend_url) as holder_connection, actor(backend_url) as waiter_connection:
        holding = asyncio.Event()

        async def hold() -> None:
            async with migration_lock(backend_url, holder_connection, timeout_s=5):
                holding.set()
                await asyncio.sleep(3600)

        async def wait() -> None:
            async with migration_lock(backend_url, waiter_connection, timeout_s=30):
                pytest.fail("the lock was granted while another task held it")

        holder = asyncio.create_task(hold())
        await holding.wait()
        waiter = asyncio.create_task(wait())
        await asyncio.sleep(0.2)  # the waiter is polling now
        waiter.cancel()
        holder.cancel()
        results = await asyncio.gather(holder, waiter, return_exceptions=True)
        assert all(isinstance(result, asyncio.CancelledError) for result in results)
        assert await lock_is_free(backend_url)
        if is_sqlite(backend_url):
            assert sqlite_lock_path(sqlite_path(backend_url)).read_text() == ""  # holder's name cleared
        else:
            [(held,)] = await fetch_all(
                backend_url,
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            assert held == 0
            assert not holder_connection.is_closed()


def test_postgres_lock_key_is_stable_signed_64_bit_and_per_database() -> None:
    """The key is a fixed function of the database name (stable across releases) that fits a bigint."""
    assert postgres_lock_key("app") == postgres_lock_key("app")
    assert postgres_lock_key("app") != postgres_lock_key("app_test")
    assert postgres_lock_key("app") == 7135899626752312012  # sha256(namespace + "app")[:8]
    assert all(-(2**63) <= postgres_lock_key(name) < 2**63 for name in ("", "a", "ünïcode", "x" * 63))


def test_sqlite_lock_file_sits_beside_the_real_database_file(tmp_path: Path) -> None:
    """The lock file is `<database>-migratelock` (not the write path's -writelock), symlinks resolved."""
    database = tmp_path / "app.db"
    link = tmp_path / "link.db"
    link.symlink_to(database)
    assert sqlite_lock_path(database) == tmp_path.resolve() / "app.db-migratelock"
    assert sqlite_lock_path(link) == sqlite_lock_path(database)

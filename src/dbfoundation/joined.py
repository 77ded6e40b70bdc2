"""Joined mode: every unit of work of a Database runs in a SAVEPOINT of one outer transaction.

This is how tests stay isolated without recreating tables: the test fixture opens a transaction, joins
the Database to it, and rolls everything back afterwards, whatever the code under test committed. All
units share one connection, so they are serialised (re-entrantly within one task); a test that needs
several connections or processes uses a database copied from the template instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from dbfoundation.session import raise_translated, run_to_completion

__all__ = ["JoinedTransaction"]


class JoinedTransaction:
    """The outer connection (already in a transaction) and the rules for units of work inside it."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._sqlite = connection.dialect.name == "sqlite"

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        if self._owner is task:  # nested unit of work in the same task: already our turn
            yield
            return
        async with self._lock:
            self._owner = task
            try:
                yield
            finally:
                self._owner = None

    @contextlib.asynccontextmanager
    async def session(self, *, where: str, read_only: bool) -> AsyncIterator[AsyncSession]:
        """A session whose commit releases a SAVEPOINT and whose rollback returns to it."""
        async with self._turn():
            session = AsyncSession(
                bind=self.connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
            )
            try:
                async with self._read_only(read_only):
                    yield session
                    await session.commit()
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await session.rollback()
                raise_translated(exc, where=where)
            finally:
                await run_to_completion(session.close)

    @contextlib.asynccontextmanager
    async def nested_connection(self, *, where: str) -> AsyncIterator[AsyncConnection]:
        async with self._turn():
            savepoint = await self.connection.begin_nested()
            try:
                yield self.connection
                await savepoint.commit()
            except BaseException as exc:
                await run_to_completion(savepoint.rollback)
                raise_translated(exc, where=where)

    @contextlib.asynccontextmanager
    async def _read_only(self, read_only: bool) -> AsyncIterator[None]:
        # Keep db.read() refusing writes in tests as it does in production (SQLite only: PostgreSQL cannot
        # make a transaction read-only after it has begun).
        if not (read_only and self._sqlite):
            yield
            return
        await self.connection.execute(text("PRAGMA query_only = ON"))
        try:
            yield
        finally:
            await run_to_completion(lambda: self.connection.execute(text("PRAGMA query_only = OFF")))

    async def check_deferred_constraints(self) -> list[str]:
        """Problems a COMMIT would have found (deferred foreign keys and constraints); [] when clean.

        Tests never commit, so without this a test that leaves a violation behind would pass.
        """
        if self._sqlite:
            rows = (await self.connection.execute(text("PRAGMA foreign_key_check"))).fetchall()
            return [f"{row[0]} rowid {row[1]} references a missing row of {row[2]}" for row in rows]
        savepoint = await self.connection.begin_nested()
        try:
            await self.connection.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
        except Exception as exc:
            await savepoint.rollback()
            return [str(getattr(exc, "orig", exc)).splitlines()[0]]
        await savepoint.rollback()
        return []

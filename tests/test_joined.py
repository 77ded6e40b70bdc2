"""Joined mode: every unit of work inside one outer transaction, each in a SAVEPOINT, all rolled back after."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, text

from dbfoundation import Database, ReadOnlyError, SessionStateError


async def _make_tables(url: str) -> None:
    async with Database.from_url(url) as db, db.write() as session:
        await session.execute(text("CREATE TABLE parents (id integer PRIMARY KEY)"))
        await session.execute(
            text(
                "CREATE TABLE children (id integer PRIMARY KEY, parent_id integer NOT NULL "
                "REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )


async def test_joined_units_commit_into_the_outer_transaction_and_vanish_with_it(backend_url: str) -> None:
    """Commits, a rollback and raw/Core/submit writes inside joined mode are visible inside, gone after."""
    await _make_tables(backend_url)
    async with Database.from_url(backend_url) as db:
        async with db.engines.writer.connect() as outer:
            await outer.begin()
            async with db.joined(outer):
                async with db.write() as session:
                    await session.execute(text("INSERT INTO parents VALUES (1)"))
                    await session.commit()
                    await session.execute(text("INSERT INTO parents VALUES (2)"))
                    await session.rollback()  # undoes 2 only
                    await session.execute(text("INSERT INTO parents VALUES (3)"))
                with pytest.raises(RuntimeError):
                    async with db.write() as session:
                        await session.execute(text("INSERT INTO parents VALUES (4)"))
                        raise RuntimeError("undo this unit only")
                async with db.connection() as connection:
                    await connection.execute(text("INSERT INTO parents VALUES (5)"))
                async with db.raw() as raw:
                    await raw.execute("INSERT INTO parents VALUES (6)")
                await db.submit(text("INSERT INTO parents VALUES (7)"))
                async with db.read() as session:
                    assert list(await session.scalars(text("SELECT id FROM parents ORDER BY id"))) == [1, 3, 5, 6, 7]
            await outer.rollback()
        async with db.read() as session:
            assert await session.scalar(text("SELECT count(*) FROM parents")) == 0


async def test_joined_read_still_refuses_writes_on_sqlite(sqlite_url: str) -> None:
    """In joined mode db.read() stays read-only on SQLite, as it is outside tests."""
    await _make_tables(sqlite_url)
    async with Database.from_url(sqlite_url) as db, db.engines.writer.connect() as outer:
        await outer.begin()
        async with db.joined(outer):
            with pytest.raises(ReadOnlyError):
                async with db.read() as session:
                    await session.execute(text("INSERT INTO parents VALUES (1)"))
            async with db.write() as session:  # the connection is writable again afterwards
                await session.execute(text("INSERT INTO parents VALUES (1)"))
        await outer.rollback()


async def test_joined_mode_serialises_concurrent_tasks_on_its_one_connection(backend_url: str) -> None:
    """Fifty concurrent writers in joined mode take turns on the single connection and all land."""
    await _make_tables(backend_url)
    async with Database.from_url(backend_url) as db, db.engines.writer.connect() as outer:
        await outer.begin()
        async with db.joined(outer):

            async def writer(n: int) -> None:
                async with db.write() as session:
                    await session.execute(text("INSERT INTO parents VALUES (:n)"), {"n": n})
                    await asyncio.sleep(0)

            await asyncio.gather(*(writer(n) for n in range(50)))
            async with db.read() as session:
                assert await session.scalar(select(text("count(*)")).select_from(text("parents"))) == 50
        await outer.rollback()


async def test_deferred_violations_are_reported_before_the_rollback(backend_url: str) -> None:
    """A deferred foreign-key violation left in the outer transaction is found by check_deferred_constraints."""
    await _make_tables(backend_url)
    async with Database.from_url(backend_url) as db, db.engines.writer.connect() as outer:
        await outer.begin()
        async with db.joined(outer) as joined:
            assert await joined.check_deferred_constraints() == []
            async with db.write() as session:
                if db.backend == "sqlite":
                    await session.execute(text("PRAGMA defer_foreign_keys = ON"))
                await session.execute(text("INSERT INTO children VALUES (1, 999)"))
            problems = await joined.check_deferred_constraints()
        await outer.rollback()
    assert len(problems) == 1
    assert "children" in problems[0] or "foreign key" in problems[0]


async def test_joining_twice_is_refused(sqlite_url: str) -> None:
    """A Database joined to one transaction refuses a second join instead of mixing them."""
    async with Database.from_url(sqlite_url) as db, db.engines.writer.connect() as outer:
        await outer.begin()
        async with db.joined(outer):
            with pytest.raises(SessionStateError, match="already joined"):
                async with db.joined(outer):
                    pass
        await outer.rollback()

"""dbfoundation's own suite on its pytest plugin: dbf_database and dbf_session on the default SQLite file.

No migrations are configured here, so the session database starts empty; the first test creates its table
inside the rolled-back transaction (SQLite DDL is transactional), so nothing outlives a test.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbfoundation import Database, ReadOnlyError
from dbfoundation.pytest_plugin import TestDatabase

CREATE = "CREATE TABLE hits (id INTEGER PRIMARY KEY, who TEXT NOT NULL)"


async def test_plugin_database_is_started_joined_and_on_a_session_file(
    dbf_database: Database, dbf_database_url: str
) -> None:
    """dbf_database is a started Database on the session's SQLite file, joined to the test's transaction."""
    assert isinstance(dbf_database, TestDatabase)
    assert dbf_database.state == "started"
    assert dbf_database.backend == "sqlite"
    assert str(dbf_database.settings.sqlite_path) in dbf_database_url
    assert dbf_database.joined_transaction is not None


async def test_plugin_session_and_database_see_each_others_commits(
    dbf_database: Database, dbf_session: AsyncSession
) -> None:
    """A row committed through dbf_session is read through db.read(), and one from db.write() by the session."""
    await dbf_session.execute(text(CREATE))
    await dbf_session.execute(text("INSERT INTO hits (who) VALUES ('session')"))
    await dbf_session.commit()
    async with dbf_database.write() as session:
        await session.execute(text("INSERT INTO hits (who) VALUES ('database')"))
    async with dbf_database.read() as session:
        assert list(await session.scalars(text("SELECT who FROM hits ORDER BY id"))) == ["session", "database"]
    assert await dbf_session.scalar(text("SELECT count(*) FROM hits")) == 2
    with pytest.raises(ReadOnlyError):  # db.read() refuses writes in tests as in production
        async with dbf_database.read() as session:
            await session.execute(text("INSERT INTO hits (who) VALUES ('reader')"))


async def test_plugin_rolls_back_even_the_table_of_the_previous_test(dbf_database: Database) -> None:
    """The table and rows the previous test committed are gone: its whole transaction was rolled back."""
    async with dbf_database.read() as session:
        tables = list(await session.scalars(text("SELECT name FROM sqlite_master WHERE type = 'table'")))
    assert "hits" not in tables

"""UTCDateTime and JSONType over real connections on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable

from dbfoundation import Database, NaiveDatetimeError
from dbfoundation.types import JSONType, UTCDateTime, utc_now

metadata = MetaData()
events = Table(
    "type_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("happened_at", UTCDateTime(), nullable=True),
)
documents = Table(
    "type_documents",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", JSONType, nullable=True),
)

ZONES = [
    dt.UTC,
    ZoneInfo("America/Los_Angeles"),
    ZoneInfo("Asia/Kolkata"),  # +05:30, not a whole hour
    ZoneInfo("Pacific/Kiritimati"),  # +14:00
    dt.timezone(dt.timedelta(hours=-9, minutes=-30)),
]


@pytest.fixture
async def database(backend_url: str) -> AsyncIterator[Database]:
    """A started Database on the backend under test, with this module's tables created."""
    async with Database.from_url(backend_url, sqlite_checkpoint_interval=0) as db:
        async with db.connection() as connection:
            await connection.run_sync(metadata.create_all)
        yield db


async def test_utc_datetime_returns_aware_utc_equal_to_the_input_instant(database: Database) -> None:
    """Aware datetimes in any zone come back aware, in UTC, as the same instant with microseconds intact."""
    local = dt.datetime(2024, 3, 10, 1, 59, 58, 123_456)  # around a US DST change
    values = [local.replace(tzinfo=zone) for zone in ZONES]
    async with database.write() as session:
        await session.execute(insert(events), [{"id": i, "happened_at": v} for i, v in enumerate(values)])
    async with database.read() as session:
        stored = (await session.scalars(select(events.c.happened_at).order_by(events.c.id))).all()
    assert len(stored) == len(values)
    for got, sent in zip(stored, values, strict=True):
        assert got.tzinfo is not None
        assert got.utcoffset() == dt.timedelta(0)
        assert got == sent
        assert got.microsecond == sent.astimezone(dt.UTC).microsecond == 123_456


async def test_utc_datetime_round_trips_utc_now(database: Database) -> None:
    """utc_now() stored and read back is equal to itself and aware."""
    now = utc_now()
    assert now.tzinfo is not None
    async with database.write() as session:
        await session.execute(insert(events).values(id=1, happened_at=now))
    async with database.read() as session:
        assert await session.scalar(select(events.c.happened_at)) == now


async def test_utc_datetime_rejects_naive_datetime_naming_the_column_and_writes_nothing(database: Database) -> None:
    """A naive datetime raises NaiveDatetimeError naming table.column, and the transaction leaves no row."""

    async def write_good_then_naive() -> None:
        async with database.write() as session:
            await session.execute(insert(events).values(id=1, happened_at=utc_now()))
            await session.execute(insert(events).values(id=2, happened_at=dt.datetime(2024, 1, 1, 12, 0)))

    with pytest.raises(NaiveDatetimeError, match=r"type_events\.happened_at") as caught:
        await write_good_then_naive()
    assert isinstance(caught.value, ValueError)
    assert caught.value.column == "type_events.happened_at"
    assert "datetime.now(timezone.utc)" in str(caught.value)
    async with database.read() as session:
        assert await session.scalar(select(func.count()).select_from(events)) == 0


async def test_utc_datetime_stores_and_returns_none(database: Database) -> None:
    """None is stored as NULL and read back as None."""
    async with database.write() as session:
        await session.execute(insert(events).values(id=1, happened_at=None))
    async with database.read() as session:
        assert await session.scalar(select(events.c.happened_at).where(events.c.id == 1)) is None
        assert await session.scalar(select(func.count()).where(events.c.happened_at.is_(None))) == 1


async def test_utc_datetime_orders_by_instant_across_zones_on_sqlite(sqlite_url: str) -> None:
    """ORDER BY a UTCDateTime column on SQLite is time order, even when the local wall-clock order differs."""
    instants = [
        dt.datetime(2024, 6, 1, 23, 0, tzinfo=ZoneInfo("America/Los_Angeles")),  # 06:00 UTC next day
        dt.datetime(2024, 6, 2, 10, 0, tzinfo=ZoneInfo("Asia/Tokyo")),  # 01:00 UTC
        dt.datetime(2024, 6, 2, 3, 0, 0, 1, tzinfo=dt.UTC),  # 03:00:00.000001 UTC
        dt.datetime(2024, 6, 2, 3, 0, tzinfo=dt.UTC),  # 03:00 UTC
        dt.datetime(2024, 6, 1, 20, 30, tzinfo=dt.timezone(dt.timedelta(hours=-9, minutes=-30))),  # 06:00 UTC, 2nd
    ]
    async with Database.from_url(sqlite_url, sqlite_checkpoint_interval=0) as db:
        async with db.connection() as connection:
            await connection.run_sync(metadata.create_all)
        async with db.write() as session:
            await session.execute(insert(events), [{"id": i, "happened_at": v} for i, v in enumerate(instants)])
        async with db.read() as session:
            ordered = (await session.scalars(select(events.c.happened_at).order_by(events.c.happened_at))).all()
            later = (
                await session.scalars(
                    select(events.c.id).where(events.c.happened_at > dt.datetime(2024, 6, 2, 3, 0, tzinfo=dt.UTC))
                )
            ).all()
    assert ordered == sorted(instants)
    assert sorted(later) == [0, 2, 4]


async def test_json_type_round_trips_nested_values(database: Database) -> None:
    """Nested dicts and lists, with strings, numbers, booleans and nulls, come back equal."""
    body = {
        "name": "sensor-7",
        "tags": ["a", "b", {"deep": [1, 2.5, None, True]}],
        "limits": {"low": -40, "high": 85, "unit": "°C"},
        "empty": {},
    }
    async with database.write() as session:
        await session.execute(insert(documents), [{"id": 1, "body": body}, {"id": 2, "body": [1, [2, [3]]]}])
    async with database.read() as session:
        rows = {row.id: row.body for row in await session.execute(select(documents.c.id, documents.c.body))}
    assert rows == {1: body, 2: [1, [2, [3]]]}


def test_json_type_compiles_to_jsonb_on_postgresql_and_json_on_sqlite() -> None:
    """The JSON column is JSONB in PostgreSQL DDL and JSON in SQLite DDL."""
    postgres_ddl = str(CreateTable(documents).compile(dialect=postgresql.dialect()))
    sqlite_ddl = str(CreateTable(documents).compile(dialect=sqlite.dialect()))
    assert "body JSONB" in postgres_ddl
    assert "body JSON" in sqlite_ddl
    assert "JSONB" not in sqlite_ddl


def test_utc_datetime_compiles_to_timestamptz_on_postgresql() -> None:
    """On PostgreSQL a UTCDateTime column is TIMESTAMP WITH TIME ZONE."""
    ddl = str(CreateTable(events).compile(dialect=postgresql.dialect()))
    assert "happened_at TIMESTAMP WITH TIME ZONE" in ddl

"""Base's naming convention, the UUID and UUIDv7 key mixins, TimestampMixin and the type annotation map."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, inspect, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.schema import CreateIndex, CreateTable

from dbfoundation import Database, NaiveDatetimeError
from dbfoundation.models import NAMING_CONVENTION, Base, TimestampMixin, UUIDPrimaryKey, UUIDv7PrimaryKey, uuid7
from dbfoundation.types import UTCDateTime


class Owner(UUIDPrimaryKey, TimestampMixin, Base):
    __tablename__ = "mdl_owners"

    name: Mapped[str] = mapped_column(String(50), unique=True)
    seen_at: Mapped[dt.datetime | None]
    profile: Mapped[dict[str, Any] | None]


class Pet(Base):
    __tablename__ = "mdl_pets"
    __table_args__ = (CheckConstraint("age >= 0", name="age_non_negative"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mdl_owners.id"), index=True)
    age: Mapped[int]


class Event(UUIDv7PrimaryKey, Base):
    __tablename__ = "mdl_events"

    label: Mapped[str] = mapped_column(String(20))


TABLES = [Owner.__table__, Pet.__table__, Event.__table__]

EXPECTED_NAMES = {
    "pk_owners": "pk_mdl_owners",
    "pk_pets": "pk_mdl_pets",
    "uq": "uq_mdl_owners_name",
    "ix": "ix_mdl_pets_owner_id",
    "fk": "fk_mdl_pets_owner_id_mdl_owners",
    "ck": "ck_mdl_pets_age_non_negative",
}


@pytest.fixture
async def database(backend_url: str) -> AsyncIterator[Database]:
    """A started Database on the backend under test, with this module's tables created."""
    async with Database.from_url(backend_url, sqlite_checkpoint_interval=0) as db:
        async with db.connection() as connection:
            await connection.run_sync(lambda sync: Base.metadata.create_all(sync, tables=TABLES))
        yield db


# -- naming convention -------------------------------------------------------------------------------------


def test_base_metadata_uses_the_design_naming_convention() -> None:
    """Base.metadata carries the pk/ix/uq/fk/ck templates of DESIGN §2."""
    convention = Base.metadata.naming_convention
    for key, template in NAMING_CONVENTION.items():
        assert convention[key] == template
    assert NAMING_CONVENTION == {
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "postgresql"])
def test_base_naming_convention_names_every_constraint_in_the_ddl(dialect: Any) -> None:
    """The compiled DDL names the primary key, unique, foreign key, check constraints and index by convention."""
    ddl = "\n".join(
        [str(CreateTable(table).compile(dialect=dialect)) for table in TABLES]
        + [str(CreateIndex(index).compile(dialect=dialect)) for table in TABLES for index in table.indexes]
    )
    for name in EXPECTED_NAMES.values():
        assert name in ddl


async def test_base_naming_convention_names_survive_create_all(database: Database) -> None:
    """After create_all on a real database, reflection reads every constraint and index back by convention name."""

    def reflect(sync_connection: Any) -> dict[str, Any]:
        inspector = inspect(sync_connection)
        return {
            "pk_owners": inspector.get_pk_constraint("mdl_owners")["name"],
            "pk_pets": inspector.get_pk_constraint("mdl_pets")["name"],
            "uq": [c["name"] for c in inspector.get_unique_constraints("mdl_owners")],
            "ix": [i["name"] for i in inspector.get_indexes("mdl_pets")],
            "fk": [f["name"] for f in inspector.get_foreign_keys("mdl_pets")],
            "ck": [c["name"] for c in inspector.get_check_constraints("mdl_pets")],
        }

    async with database.connection(read_only=True) as connection:
        found = await connection.run_sync(reflect)
    assert found["pk_owners"] == EXPECTED_NAMES["pk_owners"]
    assert found["pk_pets"] == EXPECTED_NAMES["pk_pets"]
    for key in ("uq", "ix", "fk", "ck"):
        assert EXPECTED_NAMES[key] in found[key]


async def test_base_naming_convention_names_are_in_sqlite_master(sqlite_url: str) -> None:
    """On SQLite the convention names are written into sqlite_master (the table SQL and the index rows)."""
    async with Database.from_url(sqlite_url, sqlite_checkpoint_interval=0) as db:
        async with db.connection() as connection:
            await connection.run_sync(lambda sync: Base.metadata.create_all(sync, tables=TABLES))
        async with db.read() as session:
            rows = (await session.execute(text("SELECT type, name, sql FROM sqlite_master"))).all()
    index_names = {row.name for row in rows if row.type == "index"}
    table_sql = "\n".join(row.sql for row in rows if row.type == "table")
    assert EXPECTED_NAMES["ix"] in index_names
    for key in ("pk_owners", "pk_pets", "uq", "fk", "ck"):
        assert f"CONSTRAINT {EXPECTED_NAMES[key]} " in table_sql


# -- type annotation map -----------------------------------------------------------------------------------


def test_base_maps_datetime_annotations_to_utc_datetime() -> None:
    """A plain Mapped[datetime] column gets UTCDateTime, told its own table.column name."""
    column_type = Owner.__table__.c.seen_at.type
    assert isinstance(column_type, UTCDateTime)
    assert column_type.column == "mdl_owners.seen_at"
    assert Owner.__table__.c.created_at.type.column == "mdl_owners.created_at"


def test_base_maps_dict_annotations_to_jsonb_on_postgresql() -> None:
    """A plain Mapped[dict[str, Any]] column is JSON on SQLite and JSONB on PostgreSQL."""
    assert "profile JSONB" in str(CreateTable(Owner.__table__).compile(dialect=postgresql.dialect()))
    assert "profile JSON" in str(CreateTable(Owner.__table__).compile(dialect=sqlite.dialect()))


async def test_base_datetime_annotation_rejects_naive_values(database: Database) -> None:
    """Assigning a naive datetime to a Mapped[datetime] attribute fails at flush, naming the column, writing nothing."""
    with pytest.raises(NaiveDatetimeError, match=r"mdl_owners\.seen_at"):
        async with database.write() as session:
            session.add(Owner(name="naive", seen_at=dt.datetime(2024, 1, 1)))
    async with database.read() as session:
        assert (await session.scalars(select(Owner))).all() == []


# -- UUID keys ---------------------------------------------------------------------------------------------


async def test_uuid_primary_key_is_a_random_version_4_uuid(database: Database) -> None:
    """UUIDPrimaryKey fills `id` with distinct version-4 UUIDs that round-trip as uuid.UUID."""
    async with database.write() as session:
        owners = [Owner(name=f"owner-{n}") for n in range(3)]
        session.add_all(owners)
    ids = [owner.id for owner in owners]
    assert all(isinstance(i, uuid.UUID) and i.version == 4 for i in ids)
    assert len(set(ids)) == 3
    async with database.read() as session:
        assert set((await session.scalars(select(Owner.id))).all()) == set(ids)


def test_uuid7_is_version_7_and_time_ordered() -> None:
    """1,000 uuid7() values made in a burst are version 7, RFC variant, with non-decreasing millisecond timestamps."""
    before_ms = dt.datetime.now(dt.UTC).timestamp() * 1000
    values = [uuid7() for _ in range(1000)]
    after_ms = dt.datetime.now(dt.UTC).timestamp() * 1000
    assert all(v.version == 7 and v.variant == uuid.RFC_4122 for v in values)
    stamps = [v.int >> 80 for v in values]
    assert all(a <= b for a, b in itertools.pairwise(stamps))
    assert before_ms - 1 <= stamps[0] <= stamps[-1] <= after_ms + 1
    assert len(set(values)) == 1000


async def test_uuid7_sorts_in_creation_order_across_milliseconds() -> None:
    """uuid7() values made in different milliseconds sort (as UUIDs and as text) in the order they were made."""
    values = []
    for _ in range(5):
        values.append(uuid7())
        await asyncio.sleep(0.002)
    assert sorted(values) == values
    assert sorted(str(v) for v in values) == [str(v) for v in values]


async def test_uuidv7_primary_key_fills_version_7_ids(database: Database) -> None:
    """UUIDv7PrimaryKey fills `id` with version-7 UUIDs that round-trip as uuid.UUID."""
    async with database.write() as session:
        event = Event(label="boot")
        session.add(event)
    assert event.id.version == 7
    async with database.read() as session:
        assert await session.scalar(select(Event.id).where(Event.label == "boot")) == event.id


# -- timestamps --------------------------------------------------------------------------------------------


async def test_timestamp_mixin_sets_created_and_updated_at_and_bumps_updated_at(database: Database) -> None:
    """created_at/updated_at are aware UTC on insert; an update moves updated_at forward and keeps created_at."""
    started = dt.datetime.now(dt.UTC)
    async with database.write() as session:
        owner = Owner(name="stamp")
        session.add(owner)
    created, first_update = owner.created_at, owner.updated_at
    assert created.utcoffset() == dt.timedelta(0)
    assert started <= created <= first_update <= dt.datetime.now(dt.UTC)

    await asyncio.sleep(0.002)  # a visible step on any clock
    async with database.write() as session:
        stored = await session.get_one(Owner, owner.id)
        stored.name = "stamp-renamed"
    async with database.read() as session:
        fresh = await session.get_one(Owner, owner.id)
    assert fresh.name == "stamp-renamed"
    assert fresh.created_at == created
    assert fresh.updated_at > first_update
    assert fresh.updated_at.tzinfo is not None
    assert fresh.updated_at.utcoffset() == dt.timedelta(0)

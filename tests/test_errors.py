"""The error tree, its stdlib mix-ins, pickling, messages, and typed integrity errors over real connections."""

from __future__ import annotations

import asyncio
import pickle
import traceback
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import (
    CheckConstraint,
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    func,
    insert,
    select,
)
from sqlalchemy import exc as sa_exc

import dbfoundation.errors
from dbfoundation import Database
from dbfoundation.errors import (
    ChecksumMismatch,
    CheckViolation,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    DirtyMigration,
    DuplicateKeyError,
    ForeignKeyViolation,
    IntegrityViolation,
    MigrationError,
    MigrationLockTimeout,
    MissingDependencyError,
    MultipleHeadsError,
    NaiveDatetimeError,
    NotNullViolation,
    ReadOnlyError,
    SessionStateError,
    TransactionAborted,
    WriteTimeout,
)
from dbfoundation.models import NAMING_CONVENTION

# One instance of every public error, built with sample arguments, and a phrase its message must carry.
SAMPLES: dict[type[DatabaseError], tuple[DatabaseError, str]] = {
    DatabaseError: (DatabaseError("something went wrong"), "something went wrong"),
    ConfigurationError: (
        ConfigurationError("DATABASE_URL", "mysql://app:***@db/app", "write postgresql://…"),
        "DATABASE_URL=mysql://app:***@db/app cannot be used: write postgresql://",
    ),
    MissingDependencyError: (MissingDependencyError("fastapi", "fastapi"), "pip install 'dbfoundation[fastapi]'"),
    DatabaseUnavailable: (
        DatabaseUnavailable("postgresql+asyncpg://app:***@db/app", "connection refused", "Start the server."),
        "is unavailable: connection refused. Start the server.",
    ),
    WriteTimeout: (WriteTimeout("/srv/data/app.db", 30.0, "pid 4121"), "DATABASE_WRITE_TIMEOUT"),
    SessionStateError: (
        SessionStateError("db.write()", "not started", "Use 'async with db:' first."),
        "Use 'async with db:' first.",
    ),
    ReadOnlyError: (ReadOnlyError("db.read()"), "Use db.write()"),
    TransactionAborted: (TransactionAborted(), "session.begin_nested()"),
    IntegrityViolation: (IntegrityViolation("ck_x", "x", ("x.a",)), "the write was rolled back"),
    DuplicateKeyError: (DuplicateKeyError("uq_users_email", "users", ("users.email",)), "uq_users_email"),
    ForeignKeyViolation: (ForeignKeyViolation(None, None), "foreign key constraint was violated"),
    CheckViolation: (CheckViolation("ck_users_age", "users"), "check constraint ck_users_age"),
    NotNullViolation: (NotNullViolation(None, "users", ("users.email",)), "on users.email"),
    NaiveDatetimeError: (NaiveDatetimeError("events.happened_at"), "datetime.now(timezone.utc)"),
    MigrationError: (MigrationError("upgrade failed"), "upgrade failed"),
    MigrationLockTimeout: (MigrationLockTimeout("advisory lock 42", 60.0, "pid 7"), "Another replica is migrating"),
    MultipleHeadsError: (MultipleHeadsError(("abc123", "def456")), "dbf revision --merge"),
    ChecksumMismatch: (
        ChecksumMismatch("0002_add.sql", "aaaa", "bbbb", "dbf sql repair 0002"),
        "accept the edit with: dbf sql repair 0002",
    ),
    DirtyMigration: (DirtyMigration("0003_index.sql", "dbf sql mark-clean 0003"), "dbf sql mark-clean 0003"),
}


# -- the tree ----------------------------------------------------------------------------------------------


def test_errors_all_is_covered_by_the_samples() -> None:
    """Every name in dbfoundation.errors.__all__ has a sample here, so the checks below see every class."""
    assert {cls.__name__ for cls in SAMPLES} == set(dbfoundation.errors.__all__)


@pytest.mark.parametrize("name", dbfoundation.errors.__all__)
def test_errors_every_public_class_is_a_dbfoundation_database_error(name: str) -> None:
    """Every class in errors.__all__ is dbfoundation's DatabaseError (never sqlite3's or SQLAlchemy's)."""
    cls = getattr(dbfoundation.errors, name)
    assert issubclass(cls, dbfoundation.errors.DatabaseError)
    assert not issubclass(cls, sa_exc.SQLAlchemyError)


@pytest.mark.parametrize(
    ("cls", "stdlib"),
    [
        (ConfigurationError, ValueError),
        (NaiveDatetimeError, ValueError),
        (WriteTimeout, TimeoutError),
        (MigrationLockTimeout, TimeoutError),
        (SessionStateError, RuntimeError),
        (MissingDependencyError, ImportError),
    ],
)
def test_errors_keep_their_stdlib_mix_in(cls: type[DatabaseError], stdlib: type[Exception]) -> None:
    """The stdlib mix-ins hold, so a caller's `except TimeoutError` (etc.) still catches ours."""
    assert issubclass(cls, stdlib)
    with pytest.raises(stdlib):
        raise SAMPLES[cls][0]


def test_errors_migration_and_integrity_subtrees() -> None:
    """Migration errors share MigrationError and constraint errors share IntegrityViolation."""
    for cls in (MigrationLockTimeout, MultipleHeadsError, ChecksumMismatch, DirtyMigration):
        assert issubclass(cls, MigrationError)
    for cls in (DuplicateKeyError, ForeignKeyViolation, CheckViolation, NotNullViolation):
        assert issubclass(cls, IntegrityViolation)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_errors_survive_pickling_with_equal_text_and_attributes(cls: type[DatabaseError]) -> None:
    """A pickled and unpickled error has the same type, args, attributes and str()."""
    error, _ = SAMPLES[cls]
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, round-tripped in memory
    assert type(copy) is cls
    assert copy.args == error.args
    assert vars(copy) == vars(error)
    assert str(copy) == str(error)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_errors_messages_name_the_problem_and_the_fix(cls: type[DatabaseError]) -> None:
    """Each message carries the phrase that tells the reader what to do next."""
    error, phrase = SAMPLES[cls]
    assert phrase in str(error)


def test_write_timeout_message_names_the_wait_the_holder_and_the_setting() -> None:
    """WriteTimeout says how long it waited, on which file, who held the slot, and which setting to raise."""
    with pytest.raises(WriteTimeout, match="DATABASE_WRITE_TIMEOUT") as caught:
        raise WriteTimeout("/srv/data/app.db", 2.25, "pid 4121")
    assert str(caught.value).startswith("Waited 2.2 s for the write slot on /srv/data/app.db (held by pid 4121).")
    assert "(held by" not in str(WriteTimeout("/srv/data/app.db", 1.0))


# -- typed integrity errors over real connections ----------------------------------------------------------

EMAIL = "alice@example.com"
metadata = MetaData(naming_convention=NAMING_CONVENTION)
teams = Table("err_teams", metadata, Column("id", Integer, primary_key=True))
members = Table(
    "err_members",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(100), nullable=False),
    Column("age", Integer, nullable=False),
    Column("team_id", ForeignKey("err_teams.id"), nullable=True),
    UniqueConstraint("email"),
    CheckConstraint("age >= 0", name="age_non_negative"),
)

# kind -> (error class, the offending row, the constraint name on PostgreSQL, the columns reported on SQLite)
VIOLATIONS: dict[str, tuple[type[IntegrityViolation], dict[str, Any], str, tuple[str, ...]]] = {
    "unique": (
        DuplicateKeyError,
        {"id": 2, "email": EMAIL, "age": 30, "team_id": None},
        "uq_err_members_email",
        ("err_members.email",),
    ),
    "foreign-key": (
        ForeignKeyViolation,
        {"id": 2, "email": "bob@example.com", "age": 30, "team_id": 999},
        "fk_err_members_team_id_err_teams",
        (),
    ),
    "check": (
        CheckViolation,
        {"id": 2, "email": "bob@example.com", "age": -4711, "team_id": None},
        "ck_err_members_age_non_negative",
        (),
    ),
    "not-null": (
        NotNullViolation,
        {"id": 2, "email": None, "age": 30, "team_id": None},
        "",
        ("err_members.email",),
    ),
}
FIRST_MEMBER = {"id": 1, "email": EMAIL, "age": 41, "team_id": 1}


@pytest.fixture
async def database(backend_url: str) -> AsyncIterator[Database]:
    """A started Database on the backend under test with one team and one member already committed."""
    async with Database.from_url(backend_url, sqlite_checkpoint_interval=0) as db:
        async with db.connection() as connection:
            await connection.run_sync(metadata.create_all)
            await connection.execute(insert(teams).values(id=1))
            await connection.execute(insert(members).values(**FIRST_MEMBER))
        yield db


async def _member_ids(database: Database) -> list[int]:
    async with database.read() as session:
        return list((await session.scalars(select(members.c.id).order_by(members.c.id))).all())


def _assert_typed(error: IntegrityViolation, kind: str, backend: str) -> None:
    cls, _, pg_constraint, sqlite_columns = VIOLATIONS[kind]
    assert type(error) is cls
    assert isinstance(error.__cause__, sa_exc.IntegrityError)
    if backend == "postgresql":
        if pg_constraint:
            assert error.constraint == pg_constraint
        assert error.table == "err_members"
    elif kind == "check":
        assert error.constraint == pg_constraint  # SQLite reports a CHECK constraint by its name
    else:
        assert error.columns == sqlite_columns
    # Bound parameters stay out of our text: neither the offending row's values nor the first row's.
    for value in (EMAIL, "bob@example.com", "-4711"):
        assert value not in str(error)
        assert value not in repr(error)
    assert "the write was rolled back" in str(error)


@pytest.mark.parametrize("kind", list(VIOLATIONS))
async def test_write_raises_typed_integrity_error_and_rolls_back(database: Database, kind: str) -> None:
    """A constraint violation in db.write() raises its typed error, chained to SQLAlchemy's, and nothing is kept."""
    _, row, _, _ = VIOLATIONS[kind]

    async def write_good_rows_then_the_bad_one() -> None:
        async with database.write() as session:
            await session.execute(insert(teams).values(id=2))  # would be kept if the rollback missed it
            await session.execute(insert(members).values(id=3, email="carol@example.com", age=5))
            await session.execute(insert(members).values(**row))

    with pytest.raises(IntegrityViolation) as caught:
        await write_good_rows_then_the_bad_one()
    _assert_typed(caught.value, kind, database.backend)
    assert await _member_ids(database) == [1]
    async with database.read() as session:
        assert await session.scalar(select(func.count()).select_from(teams)) == 1


async def test_write_integrity_error_and_its_sqlalchemy_cause_carry_no_bound_value(database: Database) -> None:
    """Neither our error nor the SQLAlchemy error chained behind it shows a bound value (parameters are hidden)."""
    with pytest.raises(DuplicateKeyError) as caught:
        async with database.write() as session:
            await session.execute(insert(members).values(id=2, email=EMAIL, age=1))
    error = caught.value
    assert isinstance(error.__cause__, sa_exc.IntegrityError)
    assert EMAIL not in "".join(traceback.format_exception_only(error))
    assert EMAIL not in str(error.__cause__)
    if database.backend == "sqlite":
        # The whole chain: SQLite's own message names columns, never values. (PostgreSQL's server DETAIL,
        # on the asyncpg error at the bottom of the chain, does carry the key value.)
        assert EMAIL not in "".join(traceback.format_exception(error))


@pytest.mark.parametrize("kind", list(VIOLATIONS))
async def test_submit_statement_raises_typed_integrity_error_to_its_caller(database: Database, kind: str) -> None:
    """db.submit(insert(...), params) raises the same typed error to its caller and keeps nothing of that unit."""
    _, row, _, _ = VIOLATIONS[kind]
    with pytest.raises(IntegrityViolation) as caught:
        await database.submit(insert(members), row)
    _assert_typed(caught.value, kind, database.backend)
    assert await _member_ids(database) == [1]


async def test_submit_failing_unit_does_not_sink_its_batch(database: Database) -> None:
    """In one submitted batch, only the violating unit fails; the good units beside it commit."""
    good = [{"id": n, "email": f"user{n}@example.com", "age": n, "team_id": None} for n in (10, 11)]
    results = await asyncio.gather(
        database.submit(insert(members), good[0]),
        database.submit(insert(members), VIOLATIONS["unique"][1]),
        database.submit(insert(members), good[1]),
        return_exceptions=True,
    )
    assert results[0] == 1
    assert results[2] == 1
    assert isinstance(results[1], DuplicateKeyError)
    assert EMAIL not in str(results[1])
    assert await _member_ids(database) == [1, 10, 11]

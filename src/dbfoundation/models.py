"""Base with a naming convention, and mixins for UUID primary keys and created/updated timestamps.

The naming convention gives every index and constraint a stable name, so Alembic's autogenerate diffs
stay quiet and SQLite batch migrations can drop constraints (an unnamed one cannot be dropped).
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from typing import Any, ClassVar

from sqlalchemy import MetaData, Uuid
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbfoundation.types import JSONType, UTCDateTime, utc_now

__all__ = ["NAMING_CONVENTION", "Base", "TimestampMixin", "UUIDPrimaryKey", "UUIDv7PrimaryKey", "uuid7"]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(AsyncAttrs, DeclarativeBase):
    """Declarative base for your models: the naming convention above, aware-UTC datetimes and JSON.

    `Mapped[datetime]` maps to UTCDateTime and `Mapped[dict[str, Any]]` to JSONType unless a column says
    otherwise. AsyncAttrs adds `await obj.awaitable_attrs.relation` for explicit async loading.
    """

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
    }


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): 48 bits of Unix milliseconds, then random bits.

    New keys land at the end of a B-tree index instead of at random places, which keeps inserts cheap.
    """
    milliseconds = time.time_ns() // 1_000_000
    value = (milliseconds & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


class UUIDPrimaryKey:
    """`id`: a random (version 4) UUID primary key, stored natively on PostgreSQL and as 32 hex chars on SQLite."""

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)


class UUIDv7PrimaryKey:
    """`id`: a time-ordered (version 7) UUID primary key, for tables with heavy insert traffic."""

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)


class TimestampMixin:
    """`created_at` and `updated_at`, aware UTC, set by the application on insert and on every update."""

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now, nullable=False)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utc_now, onupdate=utc_now, nullable=False)

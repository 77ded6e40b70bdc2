"""Column types: UTCDateTime (aware UTC in, aware UTC out, on both backends) and JSONType (JSONB on PostgreSQL).

SQLite stores `DateTime` as text without an offset, so an aware value would come back naive and a naive
one is ambiguous. UTCDateTime refuses naive values, stores UTC, and hands back aware UTC datetimes.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Table, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from dbfoundation.errors import NaiveDatetimeError

__all__ = ["JSONType", "UTCDateTime", "utc_now"]

JSONType = JSON().with_variant(JSONB(), "postgresql")
"""JSON on SQLite, JSONB on PostgreSQL (indexable, compact); Python dicts and lists either way."""


def utc_now() -> dt.datetime:
    """The current time as an aware UTC datetime (what `datetime.utcnow()` should have been)."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always aware and in UTC.

    Binding a naive datetime raises NaiveDatetimeError naming the column; aware values in any zone are
    converted to UTC. PostgreSQL stores `timestamptz`; SQLite stores UTC text. Values read back carry
    `tzinfo=UTC` on both.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def __init__(self, column: str | None = None) -> None:
        super().__init__()
        self.column = column  # "table.column", filled in when the column joins a table

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"{self.column or 'a UTCDateTime column'} needs a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise NaiveDatetimeError(self.column or "a UTCDateTime column")
        value = value.astimezone(dt.UTC)
        # SQLite keeps no offset in the text it stores; store naive UTC so text order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
        return value.astimezone(dt.UTC)  # type: ignore[no-any-return]


@event.listens_for(Column, "after_parent_attach")
def _name_utc_columns(column: Column[Any], parent: Any) -> None:
    # The type is told its column so the naive-datetime error can name it; a type instance may be
    # shared between columns (a type_annotation_map entry), hence the copy.
    if isinstance(column.type, UTCDateTime) and isinstance(parent, Table):
        named = copy.copy(column.type)
        named.column = f"{parent.name}.{column.name}"
        column.type = named

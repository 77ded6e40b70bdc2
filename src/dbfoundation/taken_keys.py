"""Which rows of a same-shape INSERT batch would hit a unique key: found up front, one SELECT per key.

Retried deliveries are the common case in ingest workloads, and one duplicate sinks a whole executemany;
one SELECT per unique key of the table finds them first, so the rest still run together. On SQLite the
write lock is held, so the answer cannot change before the INSERT; elsewhere a concurrent insert is still
caught by the database and the group falls back to one unit at a time (see batching).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Column, PrimaryKeyConstraint, Table, UniqueConstraint, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from dbfoundation.errors import DuplicateKeyError

__all__ = ["refuse_taken_keys", "unique_keys"]

_CHUNK = 500  # keys per IN (...): well under SQLite's and asyncpg's bound-parameter limits


async def refuse_taken_keys(
    connection: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> list[DuplicateKeyError | None]:
    """Per row, in order: the DuplicateKeyError its INSERT would meet (a key in the table, or claimed by an
    earlier row that will run), or None."""
    keys = unique_keys(table, set(rows[0]) if rows else set())
    row_keys = [[tuple(row[column.key] for column in columns) for _name, columns in keys] for row in rows]
    claimed: list[set[tuple[Any, ...]]] = []  # per unique key: values in the table, then claimed by this batch
    for i, (_name, columns) in enumerate(keys):
        wanted = list({key for values in row_keys if None not in (key := values[i])})  # NULLs never collide
        taken: set[tuple[Any, ...]] = set()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            condition = columns[0].in_([k[0] for k in chunk]) if len(columns) == 1 else tuple_(*columns).in_(chunk)
            taken.update(tuple(found) for found in await connection.execute(select(*columns).where(condition)))
        claimed.append(taken)
    refusals: list[DuplicateKeyError | None] = []
    for values in row_keys:
        clash = next((i for i, key in enumerate(values) if None not in key and key in claimed[i]), None)
        if clash is not None:
            name, columns = keys[clash]
            shown = tuple(f"{table.name}.{column.name}" for column in columns)
            refusals.append(DuplicateKeyError(name, table.name, shown))
            continue
        for i, key in enumerate(values):  # only a row that will run claims its keys for the rest of the batch
            if None not in key:
                claimed[i].add(key)
        refusals.append(None)
    return refusals


def unique_keys(table: Table, given: set[str]) -> list[tuple[str | None, list[Column[Any]]]]:
    """The table's unique keys (primary key, unique constraints, unique indexes) fully given by `given`."""
    found: list[tuple[str | None, list[Column[Any]]]] = []
    candidates: list[tuple[Any, list[Column[Any]]]] = [
        (c.name, list(c.columns)) for c in table.constraints if isinstance(c, PrimaryKeyConstraint | UniqueConstraint)
    ]
    candidates += [(i.name, [c for c in i.columns if isinstance(c, Column)]) for i in table.indexes if i.unique]
    for name, columns in candidates:
        if columns and all(column.key in given for column in columns):
            found.append((name if isinstance(name, str) else None, columns))
    return found

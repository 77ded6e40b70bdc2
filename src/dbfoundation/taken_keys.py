"""Which rows of a same-shape INSERT batch would hit a unique key: found up front, one SELECT per key.

Retried deliveries are the common case in ingest workloads, and one duplicate sinks a whole executemany;
one SELECT per unique key of the table finds them first, so the rest still run together. On SQLite the
write lock is held, so the answer cannot change before the INSERT; elsewhere a concurrent insert is still
caught by the database and the group falls back to one unit at a time (see batching).

The SELECT names its keys in a list of bound parameters whose length is a power of two, padded with a
repeat of the first key, so a table's few statements are built and compiled once each. An expanding
`IN` (SQLAlchemy's default for a list) renders every key into the SQL again at each execution: for 64
keys that took ~350 us of a batch's time under the write lock, ~210 us this way.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Column, PrimaryKeyConstraint, Select, Table, UniqueConstraint, bindparam, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from dbfoundation.errors import DuplicateKeyError

__all__ = ["refuse_taken_keys", "unique_keys"]

_CHUNK = 512  # keys per IN (...): with a few columns per key, well under SQLite's and asyncpg's limits


async def refuse_taken_keys(
    connection: AsyncConnection, table: Table, rows: Sequence[Mapping[str, Any]]
) -> list[DuplicateKeyError | None]:
    """Per row, in order: the DuplicateKeyError its INSERT would meet (a key in the table, or claimed by an
    earlier row that will run), or None."""
    keys = unique_keys(table, set(rows[0]) if rows else set())
    names = [tuple(column.key for column in columns) for _name, columns in keys]
    getters = [_key_of(key_names) for key_names in names]
    row_keys = [[get(row) for get in getters] for row in rows]
    claimed: list[set[tuple[Any, ...]]] = []  # per unique key: values in the table, then claimed by this batch
    for i, key_names in enumerate(names):
        wanted = list({key for values in row_keys if None not in (key := values[i])})  # NULLs never collide
        taken: set[tuple[Any, ...]] = set()
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            size = 1 << (len(chunk) - 1).bit_length()
            chunk += [chunk[0]] * (size - len(chunk))  # a repeated key finds nothing more
            parameters = _parameter_names(size, len(key_names))
            params = dict(zip(parameters, (value for key in chunk for value in key), strict=True))
            statement = _select_keys(table, key_names, size)
            found = await connection.execute(statement, params)
            taken.update(tuple(row) for row in found)
        claimed.append(taken)
    # From here on the write turn is held (SQLite): plain loops, no generator per row.
    refusals: list[DuplicateKeyError | None] = []
    for values in row_keys:
        clash = -1
        for i, key in enumerate(values):
            if key in claimed[i]:  # a key with a NULL is never in claimed
                clash = i
                break
        if clash >= 0:
            name, columns = keys[clash]
            shown = tuple(f"{table.name}.{column.name}" for column in columns)
            refusals.append(DuplicateKeyError(name, table.name, shown))
            continue
        for i, key in enumerate(values):  # only a row that will run claims its keys for the rest of the batch
            if None not in key:
                claimed[i].add(key)
        refusals.append(None)
    return refusals


@functools.lru_cache(maxsize=64)
def _key_of(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A row's values of a key's columns, as a tuple."""
    if len(names) == 1:
        (name,) = names
        return lambda row: (row[name],)
    return operator.itemgetter(*names)  # a tuple for two names or more


@functools.lru_cache(maxsize=64)
def _parameter_names(size: int, width: int) -> tuple[str, ...]:
    """The bound parameters of _select_keys(..., size) for keys of `width` columns, key by key."""
    return tuple(f"k{n}_{j}" for n in range(size) for j in range(width))


@functools.lru_cache(maxsize=256)  # tables hash and compare by identity
def _select_keys(table: Table, names: tuple[str, ...], size: int) -> Select[Any]:
    """SELECT the key's columns WHERE they are IN `size` bound keys named k<i>_<j> (key i, column j)."""
    columns = [table.c[name] for name in names]
    if len(columns) == 1:
        condition = columns[0].in_([bindparam(f"k{i}_0", type_=columns[0].type) for i in range(size)])
    else:
        keys = [tuple_(*(bindparam(f"k{i}_{j}", type_=c.type) for j, c in enumerate(columns))) for i in range(size)]
        condition = tuple_(*columns).in_(keys)
    return select(*columns).where(condition)


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

"""The units of db.submit()'s group commit, and how a batch of them splits into runs (see batching).

Same-shape INSERTs (one table, the same SQL, the same parameter names) run together as one executemany,
sorted by their unique key; every other unit runs alone. Whether a batch may run beside other processes'
batches on PostgreSQL is decided here too, from the same shapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Insert, Table
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

from dbfoundation.taken_keys import unique_keys

__all__ = ["Unit", "group_key", "may_overlap", "runs"]


@dataclass(eq=False, slots=True)
class Unit:
    future: asyncio.Future[Any]
    function: Callable[[AsyncSession], Awaitable[Any]] | None = None
    statement: Executable | None = None
    params: Mapping[str, Any] | None = None
    group_key: object = None  # units with equal keys may run as one executemany; None: run alone
    outcome: tuple[bool, Any] | None = field(default=None)


def group_key(statement: Executable, params: Mapping[str, Any] | None) -> object:
    """The shape of a statement unit: equal for units that may share one executemany, None for "alone"."""
    if not isinstance(statement, Insert) or params is None or statement._post_values_clause is not None:
        return None  # only plain INSERT ... VALUES adds exactly one row per parameter set
    if statement._returning or statement._values or statement._multi_values:
        return None
    if type(statement) is Insert and _is_plain(statement):
        # `insert(table)` as built, nothing added: its table is its whole shape. Per unit, this saves
        # generating a cache key (~4 us each, a tenth of a submitted INSERT's own cost).
        return (statement.table, tuple(params))
    cache_key = statement._generate_cache_key()
    return None if cache_key is None else (cache_key.key, tuple(params))


# What a plain `insert(table)` holds: the table, and what SQLAlchemy memoizes on it (dialect_options is
# memoized empty; with_dialect_options() fills it). Any generative method (prefix_with, execution_options,
# inline, ...) adds an attribute of its own, and such a statement is keyed by its cache key instead.
_PLAIN_INSERT_ATTRIBUTES = frozenset({"table", "dialect_options", "_generate_cache_key", "_memoized_keys"})


def _is_plain(statement: Insert) -> bool:
    attributes = statement.__dict__
    return attributes.keys() <= _PLAIN_INSERT_ATTRIBUTES and not attributes.get("dialect_options")


def runs(batch: list[Unit]) -> list[tuple[bool, list[Unit]]]:
    """The batch as runs in first-queued order: same-shape INSERTs together (grouped), every other unit alone.

    Same-shape INSERTs are independent, so their order is ours to choose: sorted, every process inserting
    rows in one order takes unique-index locks in one order, and two batches cannot deadlock.
    """
    groups: dict[object, list[Unit]] = {}
    in_order: list[tuple[bool, list[Unit]]] = []
    for unit in batch:
        key = unit.group_key
        if key is None:
            in_order.append((False, [unit]))
        elif key not in groups:
            groups[key] = [unit]
            in_order.append((True, groups[key]))
        else:
            groups[key].append(unit)
    for units in groups.values():
        order = _insert_order(units[0])
        if order is not None:
            units.sort(key=order)
    return in_order


def _insert_order(first: Unit) -> Callable[[Unit], str] | None:
    """A group's sort key: the values of the table's first unique key given, so that every process inserts
    the rows of such a group in that key's order; None where no unique key is given (such rows take no
    unique-index lock, and two rows with equal keys are refused as duplicates before they run)."""
    table = getattr(first.statement, "table", None)
    keys = unique_keys(table, set(first.params or {})) if isinstance(table, Table) else []
    if not keys:
        return None
    names = [column.key for column in keys[0][1]]

    def order(unit: Unit) -> str:
        params = unit.params or {}
        return repr(tuple(params[name] for name in names))  # repr: None and values of mixed types compare

    return order


def may_overlap(batch: list[Unit]) -> bool:
    """Whether this batch may run side by side with other processes' batches (PostgreSQL), which other
    batches take turns for: a function may read what it then writes and must not lose an update.

    Only same-shape INSERTs into a table with at most one unique key among their values: they change no
    row that anything read, so no update is lost; and inserted in that key's order (`_insert_order`) two
    such batches wait for each other at most one way, so they cannot deadlock (PostgreSQL detects a
    deadlock only after deadlock_timeout, a second by default). A key another batch inserted meanwhile
    fails the INSERT, and the careful run refuses it as a duplicate. A function that checks for a key
    such a batch then inserts meets the duplicate, as it would beside a db.write() block: in a batch of
    several it runs again carefully and then sees the row; alone, its caller gets DuplicateKeyError.
    Taking turns (the advisory lock) costs a statement per batch, and at one unit per batch it made the
    processes' transactions queue: insert batches of 4 processes x 1 task ran ~1,200 req/s with the lock
    taken shared, ~1,600 without.
    """
    first = batch[0]
    if first.group_key is None or any(unit.group_key != first.group_key for unit in batch):
        return False
    table = getattr(first.statement, "table", None)
    return isinstance(table, Table) and len(unique_keys(table, set(first.params or {}))) <= 1

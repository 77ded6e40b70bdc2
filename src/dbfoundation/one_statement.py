"""A PostgreSQL write that is one INSERT is sent alone: one round trip instead of three.

`async with db.write() as session: session.add(obj)` sent BEGIN, the INSERT and COMMIT, and waited for
each (asyncpg cannot pipeline them); the BEGIN and the COMMIT were two thirds of the write's round trips
and of the server's work. A single statement is atomic on its own: PostgreSQL runs a statement sent
outside a transaction in one of its own, at the default READ COMMITTED, and commits it when it ends. So
when the block ends with nothing sent yet and its flush will be exactly one INSERT, the flush runs with
the adapter in autocommit. The row, the primary key read back by RETURNING and the errors (a duplicate
key raises DuplicateKeyError from the flush instead of the COMMIT) are the same.

"Exactly one INSERT" is decided before the flush, from what the session holds, and only when nothing
could add a statement: one new object, nothing modified or deleted, a mapper with one table, no
relationship attribute set (a collection would cascade, a post_update would add an UPDATE) and no
listener that could send SQL of its own (before_insert / after_insert on the mapper, before_flush /
after_flush on the session). Anything else takes the usual BEGIN ... COMMIT. A column default that is a
Python function running its own SQL through the execution context is not seen here; such a statement
would run outside the INSERT's transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

__all__ = ["flush_is_one_insert", "without_begin_for"]


def without_begin_for(session: Session, connection: Connection) -> Any | None:
    """The adapted driver connection to flush `session` on without BEGIN, or None for the usual way."""
    try:
        adapted = connection.connection.dbapi_connection
    except Exception:  # a closed or invalidated connection: let the usual path raise what it raises
        return None
    begins_later = getattr(adapted, "begins_at_next_statement", None)  # PostgreSQL's adapter only
    if begins_later is None or not begins_later() or not flush_is_one_insert(session):
        return None
    return adapted


def flush_is_one_insert(session: Session) -> bool:
    """Whether the session's next flush is one INSERT statement and nothing else (see the module doc)."""
    new = session._new
    if len(new) != 1 or session._deleted or session.identity_map._modified:
        return False
    events = session.dispatch
    if events.before_flush or events.after_flush or events.after_flush_postexec:
        return False
    state = next(iter(new))
    mapper = state.mapper
    if len(mapper.tables) != 1 or mapper.dispatch.before_insert or mapper.dispatch.after_insert:
        return False
    values = state.dict
    return not any(key in values for key in mapper.relationships.keys())  # noqa: SIM118 - a Properties, not a dict

"""PostgreSQL statements that need no BEGIN: plain reads sent first, and a write that is one INSERT.

asyncpg cannot pipeline, so every statement of a transaction waits for a round trip, and BEGIN and COMMIT
are two of them: `async with db.write() as session: session.add(obj)` waited for three (BEGIN, INSERT,
COMMIT), a point read in db.read() for three too. PostgreSQL runs a statement sent outside a transaction
block in an implicit transaction of its own, committed when it ends. That is the same thing, not an
approximation, for two kinds of statement:

- **A plain read sent before anything else.** At READ COMMITTED (the only level db.read() and db.write()
  use) each statement takes its own snapshot, so a read that changes nothing sees the same rows in a
  transaction of its own as it would as the block's first statement. The transaction begins (lazily, as
  the adapter always does) with the first statement that is not such a read. "Plain" is decided once per
  compiled statement and conservatively: a SELECT with no FOR UPDATE/SHARE (whose locks must last to the
  COMMIT), no text or literal SQL, no prefix, suffix or hint, no custom operator or construct, and no
  function but a short list of side-effect-free ones (so `pg_advisory_xact_lock`, `nextval`, `now()`,
  whose value is the transaction's start, or a user function that writes, all begin the transaction
  first). Server-side cursors (`stream()`) need a transaction and get one.
- **A write that is one INSERT.** When a db.write() block ends with nothing sent since its plain reads
  and its flush is known to be exactly one INSERT, the flush goes alone: one new object, nothing
  modified or deleted, a mapper with one table, no relationship attribute set (a collection would
  cascade, a post_update would add an UPDATE) and no listener that could send SQL of its own
  (before_insert / after_insert on the mapper, before_flush / after_flush on the session).

The row, the key read back by RETURNING and the errors (a duplicate key raises DuplicateKeyError from the
flush instead of the COMMIT) are the same. Two differences remain, both outside what READ COMMITTED
promises: a plain read's table locks (ACCESS SHARE, which only DDL waits for) end with the read instead
of the block, and a plain read that fails, caught by the block, aborts nothing: the block's later writes
commit, as they would on SQLite. A column default that is a Python function running its own SQL through
the execution context is not seen here; such a statement would run outside the INSERT's transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BinaryExpression, ColumnClause, TextClause
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.operators import custom_op
from sqlalchemy.sql.selectable import Select

__all__ = ["do_execute", "flush_is_one_insert", "is_plain_read", "without_begin_for", "writer_without_begin"]

# Functions that read their arguments and nothing else: no side effect, no lock, no transaction time.
_PLAIN_FUNCTIONS = frozenset(
    {
        "abs", "array_agg", "avg", "bool_and", "bool_or", "ceil", "char_length", "coalesce", "concat",
        "count", "dense_rank", "floor", "greatest", "json_agg", "jsonb_agg", "least", "length", "lower",
        "max", "min", "nullif", "rank", "round", "row_number", "string_agg", "sum", "trim", "upper",
    }
)  # fmt: skip
_PLAIN = "_dbf_plain_read"  # the verdict, kept on the compiled statement (cached with it by SQLAlchemy)


def do_execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
    """The PostgreSQL engines' `dialect.do_execute`: a plain read sent before BEGIN goes alone."""
    adapted = cursor._adapt_connection
    if (
        context is not None
        and context.compiled is not None
        and not getattr(cursor, "server_side", False)
        and adapted.may_read_without_begin()
        and is_plain_read(context.compiled)
    ):
        adapted.autocommit = True  # adapted.without_begin(), without a generator per read
        try:
            cursor.execute(statement, parameters)
        finally:
            adapted.autocommit = False
        return
    cursor.execute(statement, parameters)


def is_plain_read(compiled: Any) -> bool:
    """Whether `compiled` is a SELECT that changes nothing, locks nothing past itself and reads no
    transaction-level state (see the module doc). Decided once per compiled statement."""
    verdict = compiled.__dict__.get(_PLAIN)
    if verdict is None:
        statement = compiled.statement
        state = getattr(compiled, "compile_state", None)  # an ORM select's columns are only in its Core form
        expanded = getattr(state, "statement", None)
        verdict = _plain(statement) and (expanded is None or expanded is statement or _plain(expanded))
        compiled.__dict__[_PLAIN] = verdict
    return bool(verdict)


def _plain(statement: Any) -> bool:
    return isinstance(statement, Select) and all(_plain_element(element) for element in visitors.iterate(statement))


def _plain_element(element: Any) -> bool:
    if not type(element).__module__.startswith("sqlalchemy."):
        return False  # a construct of the application's own (@compiles) may render any SQL
    if isinstance(element, Select):
        return element._for_update_arg is None and not (
            element._prefixes or element._suffixes or element._hints or element._statement_hints
        )
    if isinstance(element, FunctionElement):  # by name, and not a schema's own (func.myschema.count)
        return getattr(element, "name", None) in _PLAIN_FUNCTIONS and not getattr(element, "packagenames", ())
    if isinstance(element, TextClause):
        return False
    if isinstance(element, ColumnClause):
        return not element.is_literal or element.name == "*"  # literal_column() is any SQL; count(*)'s star
    if isinstance(element, BinaryExpression) and isinstance(element.operator, custom_op):
        return False  # an operator may be backed by any function
    return bool(getattr(element, "is_clause_element", False)) and not getattr(element, "is_dml", True)


def without_begin_for(session: Session, connection: Connection) -> Any | None:
    """The adapted driver connection to flush `session` on without BEGIN, or None for the usual way."""
    if len(session._new) != 1:  # first, as it costs least: every commit of a read or a write asks
        return None
    try:
        adapted = connection.connection.dbapi_connection
    except Exception:  # a closed or invalidated connection: let the usual path raise what it raises
        return None
    return writer_without_begin(adapted) if flush_is_one_insert(session) else None


def writer_without_begin(adapted: Any) -> Any | None:
    """`adapted` (a DBAPI connection) if a write sent on it now may go without BEGIN, else None: only
    PostgreSQL's adapter, with nothing sent yet in a plain read-write READ COMMITTED transaction."""
    may = getattr(adapted, "may_write_without_begin", None)
    return adapted if may is not None and may() else None


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

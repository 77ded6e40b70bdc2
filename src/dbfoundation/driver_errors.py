"""How a driver error becomes one of ours: classified by SQLite result code or PostgreSQL SQLSTATE.

Never by message text, except to pull the column list out of SQLite's constraint messages, which carry no
structured field for it. The original error stays attached as `__cause__`; the messages we build carry no
bound parameters and no URL.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import exc as sa_exc

from dbfoundation.errors import (
    CheckViolation,
    DatabaseError,
    DatabaseUnavailable,
    DuplicateKeyError,
    ForeignKeyViolation,
    IntegrityViolation,
    NotNullViolation,
    ReadOnlyError,
)

__all__ = ["is_retryable", "is_sqlite_busy", "translate"]

# SQLite extended result codes (sqlite.org/rescode.html).
_SQLITE_CONSTRAINTS: dict[int, type[IntegrityViolation]] = {
    2067: DuplicateKeyError,  # SQLITE_CONSTRAINT_UNIQUE
    1555: DuplicateKeyError,  # SQLITE_CONSTRAINT_PRIMARYKEY
    787: ForeignKeyViolation,  # SQLITE_CONSTRAINT_FOREIGNKEY
    275: CheckViolation,  # SQLITE_CONSTRAINT_CHECK
    1299: NotNullViolation,  # SQLITE_CONSTRAINT_NOTNULL
}
_SQLITE_BUSY, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN = 5, 8, 10, 13, 14

_POSTGRES_CONSTRAINTS: dict[str, type[IntegrityViolation]] = {
    "23505": DuplicateKeyError,
    "23503": ForeignKeyViolation,
    "23514": CheckViolation,
    "23502": NotNullViolation,
}
_POSTGRES_RETRYABLE = {"40001", "40P01"}  # serialization_failure, deadlock_detected


def _driver_errors(exc: BaseException) -> list[Any]:
    """The driver-level exceptions behind a SQLAlchemy error (2.0 chains them, 2.1 also keeps `.orig`)."""
    found: list[Any] = []
    current: Any = getattr(exc, "orig", None) or exc
    for _ in range(4):
        if current is None or current in found:
            break
        found.append(current)
        current = getattr(current, "orig", None) or current.__cause__
    return found


def _sqlite_error(exc: BaseException) -> sqlite3.Error | None:
    return next((e for e in _driver_errors(exc) if isinstance(e, sqlite3.Error)), None)


def _sqlstate(exc: BaseException) -> tuple[str | None, Any]:
    # The innermost error is asyncpg's own, which carries constraint_name and table_name.
    for error in reversed(_driver_errors(exc)):
        state = getattr(error, "sqlstate", None)
        if isinstance(state, str):
            return state, error
    return None, None


def is_sqlite_busy(exc: BaseException) -> bool:
    """True for SQLITE_BUSY in any of its extended forms (the write lock was not free)."""
    error = _sqlite_error(exc)
    return error is not None and (getattr(error, "sqlite_errorcode", 0) & 0xFF) == _SQLITE_BUSY


def is_retryable(exc: BaseException) -> bool:
    """True for PostgreSQL serialization failures and deadlocks: rerunning the unit may succeed."""
    return _sqlstate(exc)[0] in _POSTGRES_RETRYABLE


def _sqlite_columns(message: str) -> tuple[str | None, tuple[str, ...]]:
    # "UNIQUE constraint failed: signals.signal_id, signals.x" / "CHECK constraint failed: ck_name"
    _, _, detail = message.partition("constraint failed:")
    names = tuple(part.strip() for part in detail.split(",") if part.strip())
    if "." in (names[0] if names else ""):
        return None, names
    return (names[0] if names else None), ()


def translate(exc: BaseException, *, where: str = "the database") -> DatabaseError | None:
    """Return the dbfoundation error for a driver error users must act on, or None to leave it as is."""
    if isinstance(exc, DatabaseError):
        return None
    if isinstance(getattr(exc, "orig", None), DatabaseError):  # ours, raised in a bind processor and wrapped
        return exc.orig  # type: ignore[attr-defined,no-any-return]
    if isinstance(exc, sa_exc.TimeoutError):  # QueuePool: no connection free within pool_timeout
        return DatabaseUnavailable(
            where,
            "no pooled connection became free within DATABASE_POOL_TIMEOUT",
            "Raise DATABASE_POOL_SIZE / DATABASE_MAX_OVERFLOW, or keep sessions shorter.",
        )
    sqlite_error = _sqlite_error(exc)
    if sqlite_error is not None:
        code = getattr(sqlite_error, "sqlite_errorcode", 0)
        violation = _SQLITE_CONSTRAINTS.get(code)
        if violation is not None:
            constraint, columns = _sqlite_columns(str(sqlite_error))
            table = columns[0].split(".")[0] if columns else None
            return violation(constraint, table, columns)
        primary = code & 0xFF
        if primary == _SQLITE_READONLY:
            return ReadOnlyError(where)
        if primary in (_SQLITE_CANTOPEN, _SQLITE_IOERR, _SQLITE_FULL):
            reason = {
                _SQLITE_CANTOPEN: "SQLite cannot open the file",
                _SQLITE_IOERR: "the disk reported an I/O error",
                _SQLITE_FULL: "the disk is full",
            }[primary]
            return DatabaseUnavailable(
                where,
                f"{reason} ({getattr(sqlite_error, 'sqlite_errorname', code)})",
                "Check the file, its folder and free disk space; nothing from this transaction was written.",
            )
        return None
    state, error = _sqlstate(exc)
    if state is None:
        if isinstance(exc, OSError | sa_exc.InterfaceError) or any(isinstance(e, OSError) for e in _driver_errors(exc)):
            return DatabaseUnavailable(
                where,
                f"the connection failed ({type(exc).__name__})",
                "Check that the server is running and reachable, and the URL's host and port.",
            )
        return None
    violation_type = _POSTGRES_CONSTRAINTS.get(state)
    if violation_type is not None:
        column = getattr(error, "column_name", None)
        table = getattr(error, "table_name", None)
        columns = (f"{table}.{column}",) if table and column else ()
        return violation_type(getattr(error, "constraint_name", None), table, columns)
    if state == "25006":
        return ReadOnlyError(where)
    if state.startswith("08") or state in ("53300", "57P01", "57P02", "57P03"):
        return DatabaseUnavailable(
            where,
            f"the server refused or dropped the connection (SQLSTATE {state})",
            "Check that the server is running and accepts connections; the pool reconnects on its own.",
        )
    return None

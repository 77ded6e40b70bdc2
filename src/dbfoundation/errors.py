"""Everything dbfoundation raises on purpose, under one root.

```
DatabaseError                         everything dbfoundation raises on purpose
├── ConfigurationError (ValueError)   bad URL, unknown journal mode, missing migrations folder
├── MissingDependencyError (ImportError)
├── DatabaseUnavailable               cannot connect; pool exhausted
├── WriteTimeout (TimeoutError)       the write slot was not free before the deadline
├── SessionStateError (RuntimeError)  Database used before start or after stop
├── ReadOnlyError                     a write attempted through db.read()
├── TransactionAborted                a failed statement ended the whole transaction earlier; nothing committed
├── IntegrityViolation                a constraint refused the data
│   ├── DuplicateKeyError             unique or primary key
│   ├── ForeignKeyViolation
│   ├── CheckViolation
│   └── NotNullViolation
├── NaiveDatetimeError (ValueError)   a datetime without tzinfo given to a UTCDateTime column
└── MigrationError
    ├── MigrationLockTimeout (TimeoutError)
    ├── MultipleHeadsError            two heads in the script directory
    ├── ChecksumMismatch              an applied .sql file was edited
    └── DirtyMigration                a non-transactional file failed halfway; repair first
```

`DatabaseError` shares its name with `sqlite3.DatabaseError` and `sqlalchemy.exc.DatabaseError`: import it
qualified. Every error keeps its facts as attributes, builds its text in `__str__`, and passes every
constructor argument to `args` so it survives pickling (errors cross process boundaries in tests).
Driver errors are chained as `__cause__`; messages never carry a password or bound parameters.
"""

from __future__ import annotations

__all__ = [
    "CheckViolation",
    "ChecksumMismatch",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "DirtyMigration",
    "DuplicateKeyError",
    "ForeignKeyViolation",
    "IntegrityViolation",
    "MigrationError",
    "MigrationLockTimeout",
    "MissingDependencyError",
    "MultipleHeadsError",
    "NaiveDatetimeError",
    "NotNullViolation",
    "ReadOnlyError",
    "SessionStateError",
    "TransactionAborted",
    "WriteTimeout",
]


class DatabaseError(Exception):
    """Root of every error dbfoundation raises on purpose."""


class ConfigurationError(DatabaseError, ValueError):
    """A setting has a value dbfoundation cannot use; raised at start-up, before any connection."""

    def __init__(self, variable: str, shown_value: str, fix: str) -> None:
        super().__init__(variable, shown_value, fix)
        self.variable, self.shown_value, self.fix = variable, shown_value, fix  # value already masked

    def __str__(self) -> str:
        return f"{self.variable}={self.shown_value} cannot be used: {self.fix}"


class MissingDependencyError(DatabaseError, ImportError):
    """An optional integration was used without its extra installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(package, extra)
        self.package, self.extra = package, extra

    def __str__(self) -> str:
        return f"{self.package} is not installed; install it with: pip install 'dbfoundation[{self.extra}]'"


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached, or no connection was free in time."""

    def __init__(self, target: str, reason: str, fix: str) -> None:
        super().__init__(target, reason, fix)
        self.target, self.reason, self.fix = target, reason, fix  # target already masked

    def __str__(self) -> str:
        return f"{self.target} is unavailable: {self.reason}. {self.fix}"


class WriteTimeout(DatabaseError, TimeoutError):
    """The write slot was not free before DATABASE_WRITE_TIMEOUT; nothing was written."""

    def __init__(self, path: str, waited_s: float, holder: str | None = None) -> None:
        super().__init__(path, waited_s, holder)
        self.path, self.waited_s, self.holder = path, waited_s, holder

    def __str__(self) -> str:
        held = f" (held by {self.holder})" if self.holder else ""
        return (
            f"Waited {self.waited_s:.1f} s for the write slot on {self.path}{held}. Keep db.write() blocks "
            "short, with no network calls inside, or raise DATABASE_WRITE_TIMEOUT."
        )


class SessionStateError(DatabaseError, RuntimeError):
    """The Database is not in a state that allows the call (not started, or already stopped)."""

    def __init__(self, call: str, state: str, fix: str) -> None:
        super().__init__(call, state, fix)
        self.call, self.state, self.fix = call, state, fix

    def __str__(self) -> str:
        return f"{self.call} cannot run: the Database is {self.state}. {self.fix}"


class ReadOnlyError(DatabaseError):
    """A statement tried to write through a read-only session or connection."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where

    def __str__(self) -> str:
        return (
            f"{self.where} is read-only and refused a write. Use db.write() (or db.submit()) "
            "for statements that change data."
        )


class TransactionAborted(DatabaseError):
    """A statement failed in a way that ended the whole transaction, and the block went on; nothing was written.

    PostgreSQL aborts the whole transaction at its first failed statement and turns a later COMMIT into a
    rollback without an error. SQLite rolls the whole transaction back at a few errors (a full disk, an I/O
    error, an `OR ROLLBACK` conflict), after which each later statement would commit on its own. This is
    raised instead of reporting success (PostgreSQL: at the COMMIT; SQLite: at the next statement or the
    COMMIT) when the block caught that error itself and went on.
    """

    def __init__(self, where: str = "The transaction", backend: str = "postgresql") -> None:
        super().__init__(where, backend)
        self.where, self.backend = where, backend

    def __str__(self) -> str:
        if self.backend == "sqlite":
            return (
                f"{self.where} was rolled back, not committed: one of its statements failed with an error at "
                "which SQLite rolls back the whole transaction (a full disk, an I/O error, an OR ROLLBACK "
                "conflict), and the block went on; not even a SAVEPOINT keeps what ran before it. Let that "
                "error end the block, then run the block again (once the disk has room)."
            )
        return (
            f"{self.where} was rolled back, not committed: one of its statements failed and the block went "
            "on, and PostgreSQL aborts the whole transaction at a failed statement. Run a statement whose "
            "error you handle in a SAVEPOINT (async with session.begin_nested(): ...), or let the error end "
            "the block."
        )


class IntegrityViolation(DatabaseError):
    """A constraint refused the data; the transaction was rolled back.

    `constraint` is the constraint's name where the database reports it (PostgreSQL always; SQLite
    for CHECK constraints), otherwise None; `columns` lists `table.column` where known.
    """

    kind = "integrity"

    def __init__(self, constraint: str | None, table: str | None, columns: tuple[str, ...] = ()) -> None:
        super().__init__(constraint, table, columns)
        self.constraint, self.table, self.columns = constraint, table, columns

    def __str__(self) -> str:
        named = f" {self.constraint}" if self.constraint else ""
        where = f" on {', '.join(self.columns)}" if self.columns else (f" on {self.table}" if self.table else "")
        return f"{self.kind} constraint{named} was violated{where}; the write was rolled back."


class DuplicateKeyError(IntegrityViolation):
    """A unique or primary-key constraint refused a second row with the same key."""

    kind = "unique"


class ForeignKeyViolation(IntegrityViolation):
    """A row points at a parent that does not exist (or a parent still has children)."""

    kind = "foreign key"


class CheckViolation(IntegrityViolation):
    """A CHECK constraint refused the data."""

    kind = "check"


class NotNullViolation(IntegrityViolation):
    """A NOT NULL column was given no value."""

    kind = "not-null"


class NaiveDatetimeError(DatabaseError, ValueError):
    """A datetime without tzinfo was given to a UTCDateTime column."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column

    def __str__(self) -> str:
        return (
            f"{self.column} got a naive datetime (no tzinfo); pass an aware one, "
            "e.g. datetime.now(timezone.utc), so the stored instant is unambiguous."
        )


class MigrationError(DatabaseError):
    """A migration could not run, or the migration state needs attention."""


class MigrationLockTimeout(MigrationError, TimeoutError):
    """Another process held the migration lock for longer than the configured wait."""

    def __init__(self, lock: str, waited_s: float, holder: str | None = None) -> None:
        super().__init__(lock, waited_s, holder)
        self.lock, self.waited_s, self.holder = lock, waited_s, holder

    def __str__(self) -> str:
        held = f", held by {self.holder}" if self.holder else ""
        return (
            f"Waited {self.waited_s:.1f} s for the migration lock {self.lock}{held}. Another replica is "
            "migrating; wait for it, or stop it if it is stuck, then retry."
        )


class MultipleHeadsError(MigrationError):
    """The migration scripts have more than one head, so 'head' is ambiguous."""

    def __init__(self, heads: tuple[str, ...]) -> None:
        super().__init__(heads)
        self.heads = heads

    def __str__(self) -> str:
        return (
            f"the migrations have {len(self.heads)} heads ({', '.join(self.heads)}); refusing to guess. "
            "Merge them with: dbf revision --merge -m 'merge heads' (alembic merge heads)."
        )


class ChecksumMismatch(MigrationError):
    """A migration file that was already applied has been edited since."""

    def __init__(self, file: str, stored: str, current: str, repair: str) -> None:
        super().__init__(file, stored, current, repair)
        self.file, self.stored, self.current, self.repair = file, stored, current, repair

    def __str__(self) -> str:
        return (
            f"{self.file} was edited after it was applied (applied checksum {self.stored}, file now "
            f"{self.current}). Restore the file, or accept the edit with: {self.repair}"
        )


class DirtyMigration(MigrationError):
    """A file that ran outside a transaction failed halfway; later runs refuse until it is repaired."""

    def __init__(self, file: str, repair: str) -> None:
        super().__init__(file, repair)
        self.file, self.repair = file, repair

    def __str__(self) -> str:
        return (
            f"{self.file} ran outside a transaction and failed halfway, so the schema may be partly "
            f"changed. Fix the database by hand, then mark it with: {self.repair}"
        )

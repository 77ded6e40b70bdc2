"""The database layer for async Python services: engines, sessions, migrations, health."""

from dbfoundation.database import Database
from dbfoundation.errors import (
    CheckViolation,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    DuplicateKeyError,
    ForeignKeyViolation,
    IntegrityViolation,
    MigrationError,
    MigrationLockTimeout,
    MissingDependencyError,
    NaiveDatetimeError,
    NotNullViolation,
    ReadOnlyError,
    SessionStateError,
    TransactionAborted,
    WriteTimeout,
)
from dbfoundation.settings import DatabaseSettings

__all__ = [
    "CheckViolation",
    "ConfigurationError",
    "Database",
    "DatabaseError",
    "DatabaseSettings",
    "DatabaseUnavailable",
    "DuplicateKeyError",
    "ForeignKeyViolation",
    "IntegrityViolation",
    "MigrationError",
    "MigrationLockTimeout",
    "MissingDependencyError",
    "NaiveDatetimeError",
    "NotNullViolation",
    "ReadOnlyError",
    "SessionStateError",
    "TransactionAborted",
    "WriteTimeout",
]

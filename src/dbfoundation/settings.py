"""DatabaseSettings: where the database lives and how long to wait for it, read from DATABASE_* and .env.

Every bad value fails when the object is built, before any connection, with a `ConfigurationError` that
names the variable, the value (password masked) and an accepted example.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from dbfoundation.errors import ConfigurationError

__all__ = ["DatabaseSettings", "mask_url"]

JournalMode = Literal["WAL", "DELETE", "TRUNCATE", "PERSIST", "MEMORY", "OFF"]
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_SQLITE_DRIVER = "sqlite+aiosqlite"
_POSTGRES_DRIVER = "postgresql+asyncpg"
_URL_EXAMPLE = "sqlite:///./data/app.db or postgresql://user:password@host:5432/dbname"
# Matches the password part of "scheme://user:password@host" even in a string make_url cannot parse: the
# scheme may be missing or empty, and the password runs to the last "@" (an unescaped "@" inside it).
_PASSWORD_IN_URL = re.compile(r"(?P<head>(?:[a-zA-Z0-9+.\-]*://|^)[^:/@\s]*:)(?P<password>\S*)(?P<tail>@)")


def mask_url(url: str | URL) -> str:
    """Return the URL as text with its password replaced by ***, whether or not it parses."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", url)


def normalise_url(variable: str, raw: str) -> URL:
    """Parse a database URL and rewrite it to its async driver, or raise ConfigurationError."""
    shown = mask_url(raw)
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigurationError(
            variable, shown, f"it is not a database URL; write one like {_URL_EXAMPLE}."
        ) from None  # the parser's message repeats the raw URL, password included
    backend, _, driver = url.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        if driver not in ("", "asyncpg"):
            raise ConfigurationError(
                variable,
                shown,
                f"the driver {driver!r} is not supported; write postgresql+asyncpg://… "
                "(postgres:// and postgresql:// are accepted and rewritten).",
            )
        if not url.database:
            raise ConfigurationError(variable, shown, "it names no database; add /dbname at the end.")
        if "@" in (url.host or ""):
            # make_url splits at the first "@", so the password's tail would be taken for the host and shown.
            raise ConfigurationError(
                variable, shown, "the password contains an unescaped '@'; percent-encode it as %40."
            )
        return url.set(drivername=_POSTGRES_DRIVER)
    if backend == "sqlite":
        if driver not in ("", "aiosqlite", "pysqlite"):
            raise ConfigurationError(
                variable, shown, f"the driver {driver!r} is not supported; write sqlite:///path/to/app.db."
            )
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in str(url):
            raise ConfigurationError(
                variable,
                shown,
                "an in-memory database gives each of the writer and reader connections its own empty "
                "database; use a file, e.g. sqlite:///./data/app.db (tests: a file under tmp_path).",
            )
        return url.set(drivername=_SQLITE_DRIVER)
    raise ConfigurationError(
        variable,
        shown,
        f"the backend {backend!r} is not supported; dbfoundation speaks SQLite and PostgreSQL: {_URL_EXAMPLE}.",
    )


class DatabaseSettings(BaseSettings):
    """Where the database lives and how long to wait for it. Read from DATABASE_* and .env.

    Build it with keywords in code (`DatabaseSettings(url=...)`) or leave it to the environment. The
    URL is kept out of `repr`; `masked_url` is the form safe to show.
    """

    model_config = SettingsConfigDict(
        env_prefix="DATABASE_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        use_attribute_docstrings=True,
        hide_input_in_errors=True,
        populate_by_name=True,
        validate_by_name=True,
    )

    url: str = Field(default="sqlite+aiosqlite:///./data/app.db", repr=False)
    """SQLAlchemy URL; postgres://, postgresql:// and sqlite:/// are rewritten to their async drivers."""
    read_url: str | None = Field(default=None, repr=False)
    """PostgreSQL only: a replica that db.read() uses; writes always go to `url`."""
    echo: bool = False
    """Log every SQL statement with its parameters (parameters are hidden from logs and errors otherwise)."""
    pool_size: int = Field(default=10, ge=1)
    """PostgreSQL: connections kept open per process."""
    max_overflow: int = Field(default=5, ge=0)
    """PostgreSQL: extra connections opened under load beyond pool_size."""
    pool_pre_ping: bool = True
    """PostgreSQL: test a pooled connection before handing it out when it sat idle 0.5 s or more (survives
    server restarts; one returned within 0.5 s just worked, and is not pinged, as in HikariCP)."""
    pool_timeout: float = Field(default=30.0, gt=0)
    """Seconds to wait for a free pooled connection before DatabaseUnavailable."""
    pool_recycle: float = Field(default=3600.0, gt=0)
    """PostgreSQL: seconds after which a pooled connection is replaced."""
    write_timeout: float = Field(default=30.0, gt=0)
    """Seconds db.write() and db.submit() may wait for the write slot before raising WriteTimeout."""
    sqlite_busy_timeout: float = Field(
        default=5.0,
        ge=0,
        validation_alias=AliasChoices("sqlite_busy_timeout", "DATABASE_SQLITE_BUSY_TIMEOUT", "SQLITE_TIMEOUT"),
    )
    """SQLite: seconds a connection waits on a lock held by a writer outside dbfoundation (alias SQLITE_TIMEOUT)."""
    sqlite_journal_mode: JournalMode = "WAL"
    """SQLite: journal mode, set once at start. WAL lets readers run beside the writer."""
    sqlite_synchronous: Synchronous = "NORMAL"
    """SQLite: NORMAL survives an application crash; FULL also survives power loss, at a cost per commit."""
    sqlite_cache_size: int = Field(
        default=2000,
        validation_alias=AliasChoices("sqlite_cache_size", "DATABASE_SQLITE_CACHE_SIZE", "SQLITE_CACHE_SIZE"),
    )
    """SQLite: page cache per connection; positive = pages, negative = KiB (alias SQLITE_CACHE_SIZE)."""
    sqlite_mmap_size: int = Field(default=134_217_728, ge=0)
    """SQLite: bytes of the file to memory-map (0 disables)."""
    sqlite_foreign_keys: bool = True
    """SQLite: enforce foreign keys (SQLite's own default is off)."""
    sqlite_journal_size_limit: int = Field(default=67_108_864, ge=-1)
    """SQLite: bytes the WAL is truncated to after a checkpoint (-1: no limit)."""
    sqlite_readers: int = Field(default=4, ge=1, le=64)
    """SQLite: reader connections per process (each is a thread); writers are one or two, taking turns
    (admission.WriteAdmission)."""
    sqlite_inline_writes: bool = True
    """SQLite: once a writer has its turn, run its statements (and, in WAL at synchronous NORMAL or OFF,
    its COMMIT) on the event loop's thread instead of a thread hop each: ~1.4x writes/s. A statement then
    holds up the loop while it runs, so turn it off if write transactions run long statements; an
    executemany of more than 256 rows, and a BEGIN that meets a writer outside dbfoundation, always go to
    the thread. A read transaction's COMMIT (it only ends the snapshot) runs on the loop's thread too (its
    statements: see sqlite_inline_read_steps)."""
    sqlite_inline_read_steps: int = Field(default=10_000, ge=0)
    """SQLite: a read statement runs on the event loop's thread (no thread hop) until it has taken this
    many SQLite VM steps (a point read takes a few dozen; 10,000 is well under a millisecond); one that
    needs more is stopped and runs again on a reader thread, in the same snapshot. Reads also go to the
    thread while a writer of this process waits for another process's lock file. 0 sends every read
    statement to a thread. Needs DATABASE_SQLITE_INLINE_WRITES."""
    sqlite_lock_file: bool = True
    """SQLite: serialise writers of all processes on the <db>-writelock file (local filesystems only)."""
    sqlite_checkpoint_interval: float = Field(default=10.0, ge=0)
    """SQLite: seconds between WAL size checks of the background checkpointer (0 turns it off)."""
    migrations_path: str = "migrations"
    """The Alembic migrations folder (made by `dbf init`), relative to the working directory."""
    sql_migrations_path: str = "sql_migrations"
    """The folder of plain-SQL migrations (NNNN_name.sql) for `dbf sql` and the plain-SQL runner."""
    migration_lock_timeout: float = Field(default=600.0, gt=0)
    """Seconds a migration waits for another replica's migration lock before MigrationLockTimeout."""

    _resolved_url: tuple[str, URL] | None = PrivateAttr(default=None)  # (url it was built from, result)

    @field_validator("sqlite_journal_mode", "sqlite_synchronous", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _configuration_error(exc) from None  # pydantic's text would repeat the input
        # Parse once here so a bad URL fails now, not at first use.
        self.async_url  # noqa: B018 - resolves and keeps the URL
        if self.read_url is not None:
            read = normalise_url("DATABASE_READ_URL", self.read_url)
            if read.get_backend_name() != "postgresql" or self.backend != "postgresql":
                raise ConfigurationError(
                    "DATABASE_READ_URL",
                    mask_url(self.read_url),
                    "a read replica is only supported with PostgreSQL on both DATABASE_URL and DATABASE_READ_URL.",
                )

    @property
    def async_url(self) -> URL:
        """The URL with its async driver (a SQLite path made absolute), ready for create_async_engine."""
        if self._resolved_url is None or self._resolved_url[0] != self.url:  # model_copy(update=...) changes url
            url = normalise_url("DATABASE_URL", self.url)
            if url.get_backend_name() == "sqlite" and "uri" not in url.query:
                # Resolve a relative (or ~) path once: SQLite opens it against the working directory of each
                # later connect, so a chdir after start would otherwise split one database into two files.
                url = url.set(database=str(Path(url.database or "").expanduser().absolute()))
            self._resolved_url = (self.url, url)
        return self._resolved_url[1]

    @property
    def async_read_url(self) -> URL | None:
        return None if self.read_url is None else normalise_url("DATABASE_READ_URL", self.read_url)

    @property
    def masked_url(self) -> str:
        """The URL with its password replaced by ***: the only form that may be logged or shown."""
        return mask_url(self.async_url)

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self.async_url.get_backend_name() == "sqlite" else "postgresql"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file, resolved against the working directory when the settings were built; ValueError on
        PostgreSQL."""
        if self.backend != "sqlite":
            raise ValueError("sqlite_path is only defined for SQLite URLs")
        return Path(self.async_url.database or "")


_ENV_NAMES = {
    "sqlite_busy_timeout": "DATABASE_SQLITE_BUSY_TIMEOUT",
    "sqlite_cache_size": "DATABASE_SQLITE_CACHE_SIZE",
}
_EXAMPLES = {
    "sqlite_journal_mode": "WAL",
    "sqlite_synchronous": "NORMAL (or FULL)",
    "pool_size": "10",
    "max_overflow": "5",
    "sqlite_readers": "4",
    "write_timeout": "30",
    "pool_timeout": "30",
}


def _configuration_error(exc: ValidationError) -> ConfigurationError:
    """Turn pydantic's first complaint into our one-line error; secrets (url fields) stay masked."""
    error = exc.errors(include_input=True)[0]
    field = str(error["loc"][0]) if error["loc"] else "?"
    variable = _ENV_NAMES.get(field, f"DATABASE_{field.upper()}")
    raw = error.get("input")
    shown = mask_url(str(raw)) if field in ("url", "read_url") else repr(raw)
    example = _EXAMPLES.get(field)
    message = str(error["msg"])
    hint = message[:1].lower() + message[1:] + (f"; for example {variable}={example}" if example else "")
    return ConfigurationError(variable, shown, hint + ".")

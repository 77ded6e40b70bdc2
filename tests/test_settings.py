"""DatabaseSettings: defaults, environment and .env, aliases, URL normalising, masking, and early failure."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbfoundation import Database, DatabaseSettings
from dbfoundation.errors import ConfigurationError

SECRET = "s3cr3t-pw"  # noqa: S105 - a fake password the tests look for in every output
PG_URL = f"postgresql://app:{SECRET}@db.internal:5432/app"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run each test in an empty folder (no stray .env) with no DATABASE_* or SQLite alias variables set."""
    for name in list(os.environ):
        if name.upper().startswith(("DATABASE_", "SQLITE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and every __cause__/__context__ behind it, suppressed or not."""
    seen: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    yield from seen


def _assert_secret_absent(exc: BaseException) -> None:
    assert SECRET not in "".join(traceback.format_exception(exc))
    for error in _chain(exc):
        assert SECRET not in str(error)
        assert SECRET not in repr(error)
        assert SECRET not in repr(error.args)


# -- where values come from --------------------------------------------------------------------------------


def test_settings_defaults_match_the_design() -> None:
    """With nothing configured the settings are the documented defaults: embedded SQLite under ./data."""
    settings = DatabaseSettings()
    assert settings.url == "sqlite+aiosqlite:///./data/app.db"
    assert settings.backend == "sqlite"
    assert settings.read_url is None
    assert settings.echo is False
    assert settings.pool_size == 10
    assert settings.max_overflow == 5
    assert settings.pool_pre_ping is True
    assert settings.write_timeout == 30.0
    assert settings.sqlite_busy_timeout == 5.0
    assert settings.sqlite_journal_mode == "WAL"
    assert settings.sqlite_synchronous == "NORMAL"
    assert settings.sqlite_cache_size == 2000
    assert settings.sqlite_mmap_size == 134_217_728
    assert settings.sqlite_foreign_keys is True
    assert settings.sqlite_journal_size_limit == 67_108_864


def test_settings_read_database_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """DATABASE_* environment variables set the matching fields, converted to their types."""
    monkeypatch.setenv("DATABASE_URL", PG_URL)
    monkeypatch.setenv("DATABASE_ECHO", "true")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "20")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "0")
    monkeypatch.setenv("DATABASE_POOL_PRE_PING", "false")
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", "2.5")
    monkeypatch.setenv("DATABASE_WRITE_TIMEOUT", "7.5")
    monkeypatch.setenv("DATABASE_SQLITE_JOURNAL_MODE", "delete")
    monkeypatch.setenv("DATABASE_SQLITE_SYNCHRONOUS", "full")
    monkeypatch.setenv("DATABASE_SQLITE_BUSY_TIMEOUT", "1.5")
    monkeypatch.setenv("DATABASE_SQLITE_CACHE_SIZE", "-4000")
    monkeypatch.setenv("DATABASE_SQLITE_FOREIGN_KEYS", "false")
    settings = DatabaseSettings()
    assert settings.backend == "postgresql"
    assert settings.async_url.render_as_string(hide_password=False) == (
        f"postgresql+asyncpg://app:{SECRET}@db.internal:5432/app"
    )
    assert settings.echo is True
    assert (settings.pool_size, settings.max_overflow, settings.pool_pre_ping) == (20, 0, False)
    assert (settings.pool_timeout, settings.write_timeout) == (2.5, 7.5)
    assert (settings.sqlite_journal_mode, settings.sqlite_synchronous) == ("DELETE", "FULL")
    assert (settings.sqlite_busy_timeout, settings.sqlite_cache_size) == (1.5, -4000)
    assert settings.sqlite_foreign_keys is False


def test_settings_read_a_dotenv_file_in_the_working_directory(tmp_path: Path) -> None:
    """A .env file in the working directory supplies DATABASE_* values like the environment does."""
    (tmp_path / ".env").write_text(
        f"DATABASE_URL={PG_URL}\nDATABASE_POOL_SIZE=3\nDATABASE_WRITE_TIMEOUT=4\nUNRELATED_SETTING=ignored\n"
    )
    settings = DatabaseSettings()
    assert settings.backend == "postgresql"
    assert settings.pool_size == 3
    assert settings.write_timeout == 4.0


def test_settings_environment_wins_over_dotenv_and_keywords_win_over_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyword beats an environment variable, which beats the same name in .env."""
    (tmp_path / ".env").write_text("DATABASE_POOL_SIZE=3\nDATABASE_MAX_OVERFLOW=1\n")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "4")
    monkeypatch.setenv("DATABASE_MAX_OVERFLOW", "2")
    settings = DatabaseSettings(max_overflow=9)
    assert settings.pool_size == 4
    assert settings.max_overflow == 9


def test_settings_accept_sqlite_timeout_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLITE_TIMEOUT, the name existing services use, sets the SQLite busy timeout."""
    monkeypatch.setenv("SQLITE_TIMEOUT", "12.5")
    assert DatabaseSettings().sqlite_busy_timeout == 12.5


def test_settings_accept_sqlite_cache_size_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLITE_CACHE_SIZE, the name existing services use, sets the SQLite page cache size."""
    monkeypatch.setenv("SQLITE_CACHE_SIZE", "-64000")
    assert DatabaseSettings().sqlite_cache_size == -64000


def test_settings_keywords_in_code_set_fields(tmp_path: Path) -> None:
    """Settings built with keywords in code use those values, aliased fields included."""
    settings = DatabaseSettings(
        url=f"sqlite:///{tmp_path / 'kw.db'}",
        pool_size=2,
        write_timeout=0.5,
        sqlite_busy_timeout=0.25,
        sqlite_cache_size=100,
        sqlite_synchronous="full",
    )
    assert settings.sqlite_path == tmp_path / "kw.db"
    assert (settings.pool_size, settings.write_timeout) == (2, 0.5)
    assert (settings.sqlite_busy_timeout, settings.sqlite_cache_size) == (0.25, 100)
    assert settings.sqlite_synchronous == "FULL"


# -- URL normalising ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "postgres://app:pw@db:5432/app",
        "postgresql://app:pw@db:5432/app",
        "postgresql+asyncpg://app:pw@db:5432/app",
    ],
)
def test_settings_url_postgres_schemes_become_asyncpg(raw: str) -> None:
    """postgres://, postgresql:// and postgresql+asyncpg:// all become postgresql+asyncpg://, the rest unchanged."""
    settings = DatabaseSettings(url=raw)
    assert settings.async_url.render_as_string(hide_password=False) == "postgresql+asyncpg://app:pw@db:5432/app"
    assert settings.backend == "postgresql"


@pytest.mark.parametrize("raw", ["sqlite:///x.db", "sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"])
def test_settings_url_sqlite_schemes_become_aiosqlite(raw: str, tmp_path: Path) -> None:
    """sqlite:/// and sqlite+pysqlite:/// become sqlite+aiosqlite:/// on the same file."""
    settings = DatabaseSettings(url=raw)
    assert settings.async_url.drivername == "sqlite+aiosqlite"
    assert settings.backend == "sqlite"
    assert settings.sqlite_path == tmp_path / "x.db"


def test_settings_url_relative_sqlite_path_is_resolved_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative SQLite path names a file under the working directory at the time the settings are built."""
    first = tmp_path / "first"
    first.mkdir()
    monkeypatch.chdir(first)
    settings = DatabaseSettings(url="sqlite:///./data/rel.db")
    monkeypatch.chdir(tmp_path)  # a later chdir must not move the database
    assert settings.sqlite_path == first / "data" / "rel.db"
    assert settings.async_url.database == str(first / "data" / "rel.db")


def test_settings_absolute_sqlite_path_is_kept(tmp_path: Path) -> None:
    """An absolute SQLite path (four slashes) is used as written."""
    path = tmp_path / "abs" / "app.db"
    assert DatabaseSettings(url=f"sqlite:///{path}").sqlite_path == path


def test_settings_sqlite_path_is_refused_on_postgresql() -> None:
    """sqlite_path on a PostgreSQL URL raises ValueError instead of inventing a path."""
    with pytest.raises(ValueError, match="only defined for SQLite"):
        _ = DatabaseSettings(url=PG_URL).sqlite_path


# -- bad values fail at construction -----------------------------------------------------------------------

# (environment, variable named, bad value as shown, accepted example or fix)
BAD_VALUES = [
    pytest.param(
        {"DATABASE_URL": f"postgres://app:{SECRET}@db:notaport/app"},
        "DATABASE_URL",
        "postgres://app:***@db:notaport/app",
        "postgresql://user:password@host",
        id="malformed-port",
    ),
    pytest.param(
        {"DATABASE_URL": f"://app:{SECRET}@db/app"},
        "DATABASE_URL",
        "://app:***@db/app",
        "write one like sqlite:///",
        id="malformed-no-scheme",
    ),
    pytest.param(
        {"DATABASE_URL": f"app:{SECRET}@db/app"},
        "DATABASE_URL",
        "app:***@db/app",
        "write one like sqlite:///",
        id="malformed-bare",
    ),
    pytest.param(
        {"DATABASE_URL": f"mysql://app:{SECRET}@db/app"},
        "DATABASE_URL",
        "mysql://app:***@db/app",
        "SQLite and PostgreSQL: sqlite:///",
        id="unknown-backend",
    ),
    pytest.param(
        {"DATABASE_URL": f"postgresql+psycopg2://app:{SECRET}@db/app"},
        "DATABASE_URL",
        "postgresql+psycopg2://app:***@db/app",
        "write postgresql+asyncpg://",
        id="unsupported-driver",
    ),
    pytest.param(
        {"DATABASE_URL": "sqlite+pysqlcipher:///x.db"},
        "DATABASE_URL",
        "sqlite+pysqlcipher:///x.db",
        "write sqlite:///path/to/app.db",
        id="unsupported-sqlite-driver",
    ),
    pytest.param(
        {"DATABASE_URL": f"postgresql://app:{SECRET}@db:5432"},
        "DATABASE_URL",
        "postgresql://app:***@db:5432",
        "add /dbname",
        id="no-database-name",
    ),
    pytest.param(
        {"DATABASE_URL": f"postgresql://app:{SECRET}@extra@db:5432/app"},
        "DATABASE_URL",
        "postgresql://app:***@db:5432/app",
        "percent-encode it as %40",
        id="unescaped-at-in-password",
    ),
    pytest.param(
        {"DATABASE_URL": PG_URL, "DATABASE_SQLITE_JOURNAL_MODE": "walrus"},
        "DATABASE_SQLITE_JOURNAL_MODE",
        "WALRUS",
        "DATABASE_SQLITE_JOURNAL_MODE=WAL",
        id="unknown-journal-mode",
    ),
    pytest.param(
        {"DATABASE_URL": PG_URL, "DATABASE_SQLITE_SYNCHRONOUS": "sometimes"},
        "DATABASE_SQLITE_SYNCHRONOUS",
        "SOMETIMES",
        "DATABASE_SQLITE_SYNCHRONOUS=NORMAL",
        id="unknown-synchronous",
    ),
    pytest.param(
        {"DATABASE_URL": PG_URL, "DATABASE_POOL_SIZE": "-1"},
        "DATABASE_POOL_SIZE",
        "-1",
        "DATABASE_POOL_SIZE=10",
        id="negative-pool-size",
    ),
    pytest.param(
        {"DATABASE_URL": PG_URL, "DATABASE_POOL_SIZE": "ten"},
        "DATABASE_POOL_SIZE",
        "ten",
        "DATABASE_POOL_SIZE=10",
        id="non-numeric-pool-size",
    ),
    pytest.param(
        {"DATABASE_URL": PG_URL, "DATABASE_MAX_OVERFLOW": "-2"},
        "DATABASE_MAX_OVERFLOW",
        "-2",
        "DATABASE_MAX_OVERFLOW=5",
        id="negative-max-overflow",
    ),
    pytest.param(
        {"DATABASE_URL": PG_URL, "DATABASE_WRITE_TIMEOUT": "0"},
        "DATABASE_WRITE_TIMEOUT",
        "0",
        "DATABASE_WRITE_TIMEOUT=30",
        id="zero-write-timeout",
    ),
    pytest.param(
        {"DATABASE_URL": PG_URL, "DATABASE_WRITE_TIMEOUT": "-5"},
        "DATABASE_WRITE_TIMEOUT",
        "-5",
        "DATABASE_WRITE_TIMEOUT=30",
        id="negative-write-timeout",
    ),
    pytest.param(
        {"DATABASE_URL": "sqlite:///:memory:"},
        "DATABASE_URL",
        "sqlite:///:memory:",
        "use a file, e.g. sqlite:///./data/app.db",
        id="memory",
    ),
    pytest.param(
        {"DATABASE_URL": "sqlite+aiosqlite:///:memory:"},
        "DATABASE_URL",
        "sqlite+aiosqlite:///:memory:",
        "use a file, e.g. sqlite:///./data/app.db",
        id="memory-aiosqlite",
    ),
    pytest.param(
        {"DATABASE_URL": "sqlite://"},
        "DATABASE_URL",
        "sqlite://",
        "use a file, e.g. sqlite:///./data/app.db",
        id="sqlite-no-path",
    ),
    pytest.param(
        {"DATABASE_URL": "sqlite:///./data/app.db", "DATABASE_READ_URL": f"postgresql://ro:{SECRET}@replica/app"},
        "DATABASE_READ_URL",
        "postgresql://ro:***@replica/app",
        "only supported with PostgreSQL",
        id="read-url-with-sqlite",
    ),
    pytest.param(
        {"DATABASE_URL": PG_URL, "DATABASE_READ_URL": "sqlite:///./replica.db"},
        "DATABASE_READ_URL",
        "sqlite:///./replica.db",
        "only supported with PostgreSQL",
        id="sqlite-read-url",
    ),
]


@pytest.mark.parametrize(("environment", "variable", "shown", "fix"), BAD_VALUES)
def test_settings_bad_value_raises_configuration_error_naming_variable_value_and_fix(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    environment: dict[str, str],
    variable: str,
    shown: str,
    fix: str,
) -> None:
    """A bad value fails at construction with a ConfigurationError naming the variable, the masked value and a fix."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        DatabaseSettings()
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.variable == variable
    assert str(error).startswith(f"{variable}=")
    assert shown in str(error)
    assert shown in error.shown_value
    assert fix in str(error)
    _assert_secret_absent(error)
    assert list(tmp_path.iterdir()) == []  # nothing was created: no connection was attempted


def test_settings_bad_keyword_value_raises_configuration_error() -> None:
    """A bad value passed as a keyword fails the same way as one from the environment."""
    with pytest.raises(ConfigurationError, match=r"DATABASE_SQLITE_JOURNAL_MODE=.*DATABASE_SQLITE_JOURNAL_MODE=WAL"):
        DatabaseSettings(url=PG_URL, sqlite_journal_mode="sideways")


def test_settings_bad_alias_value_names_the_variable_and_hides_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad SQLITE_TIMEOUT names the busy-timeout variable and leaves the URL's password out."""
    monkeypatch.setenv("DATABASE_URL", PG_URL)
    monkeypatch.setenv("SQLITE_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="DATABASE_SQLITE_BUSY_TIMEOUT='soon'") as caught:
        DatabaseSettings()
    _assert_secret_absent(caught.value)


def test_settings_bad_url_keyword_raises_configuration_error_without_the_password() -> None:
    """A bad URL given as a keyword raises ConfigurationError with the password shown as ***."""
    with pytest.raises(ConfigurationError, match=r"DATABASE_URL=mysql://app:\*\*\*@db/app cannot be used") as caught:
        DatabaseSettings(url=f"mysql://app:{SECRET}@db/app")
    _assert_secret_absent(caught.value)


# -- secrets stay out of what is shown ---------------------------------------------------------------------


def test_settings_repr_and_str_never_show_the_password() -> None:
    """repr() and str() of settings carry neither URL's password (nor the URLs at all)."""
    settings = DatabaseSettings(url=PG_URL, read_url=f"postgresql://ro:{SECRET}@replica/app")
    for shown in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert SECRET not in shown
        assert "pool_size=10" in shown  # the rest is still visible for debugging


def test_settings_masked_url_replaces_the_password_with_stars() -> None:
    """masked_url shows the async URL with *** in place of the password."""
    settings = DatabaseSettings(url=PG_URL)
    assert settings.masked_url == "postgresql+asyncpg://app:***@db.internal:5432/app"
    assert SECRET not in settings.masked_url


def test_database_repr_never_shows_the_password() -> None:
    """repr(Database) names the database by its masked URL."""
    database = Database(DatabaseSettings(url=PG_URL))
    assert SECRET not in repr(database)
    assert "app:***@db.internal" in repr(database)


# -- start creates the SQLite folder -----------------------------------------------------------------------


async def test_database_start_creates_the_missing_folder_of_a_sqlite_file(tmp_path: Path) -> None:
    """Starting a Database on a file in a folder that does not exist creates the folder and the file."""
    path = tmp_path / "not" / "yet" / "there" / "app.db"
    database = Database(DatabaseSettings(url=f"sqlite:///{path}"))
    assert not path.parent.exists()
    await database.start()
    try:
        assert path.parent.is_dir()
        assert path.is_file()
    finally:
        await database.stop()


async def test_database_start_creates_the_relative_default_folder(tmp_path: Path) -> None:
    """The default URL puts the file at ./data/app.db under the working directory, creating ./data."""
    async with Database(DatabaseSettings(sqlite_checkpoint_interval=0)):
        assert (tmp_path / "data" / "app.db").is_file()

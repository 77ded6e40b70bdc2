"""`dbf` (and `python -m dbfoundation`): parse, call the library functions, map errors to exit codes.

Every error is one line on stderr plus a hint; `--debug` shows the traceback instead. Output a script
might parse has `--json`. Exit codes:

    0  success (health: pass or warn)      4  database unavailable
    1  check found a difference / health   5  a lock or the write slot timed out
       failed                               6  migration state needs repair (checksum, dirty, heads)
    2  usage error                          7  any other dbfoundation error
    3  configuration error
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

from dbfoundation.errors import (
    ChecksumMismatch,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    DirtyMigration,
    MigrationLockTimeout,
    MissingDependencyError,
    MultipleHeadsError,
    WriteTimeout,
)

try:
    import typer
    from rich.console import Console
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("typer and rich", "cli") from exc

__all__ = ["app", "main"]

T = TypeVar("T")
EXIT_DIFFERENCE, EXIT_CONFIG, EXIT_UNAVAILABLE, EXIT_TIMEOUT, EXIT_REPAIR, EXIT_OTHER = 1, 3, 4, 5, 6, 7

app = typer.Typer(
    name="dbf",
    help="dbfoundation: migrations, plain-SQL migrations, health and diagnostics for your database.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sql_app = typer.Typer(
    help="Plain-SQL migrations (NNNN_name.sql files) for projects without models.", no_args_is_help=True
)
app.add_typer(sql_app, name="sql")
out = Console()
err = Console(stderr=True)


class _Options:
    url: str | None = None
    migrations: str | None = None
    debug: bool = False


options = _Options()


@app.callback()
def _global(
    url: Annotated[str | None, typer.Option(help="Database URL (default: DATABASE_URL / .env).")] = None,
    migrations: Annotated[
        str | None, typer.Option(help="Migrations folder (default: DATABASE_MIGRATIONS_PATH or ./migrations).")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
) -> None:
    options.url, options.migrations, options.debug = url, migrations, debug
    # env.py imports the project's models; as with alembic's prepend_sys_path, the project root is cwd.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _settings() -> Any:
    from dbfoundation.settings import DatabaseSettings

    overrides: dict[str, Any] = {}
    if options.url:
        overrides["url"] = options.url
    if options.migrations:
        overrides["migrations_path"] = options.migrations
    try:
        return DatabaseSettings(**overrides)
    except DatabaseError as exc:
        if options.debug:
            raise
        _fail(*_classify(exc))


def _fail(code: int, message: str, hint: str | None = None) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"[dim]hint:[/] {hint}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """One asyncio.run per command; dbfoundation errors become one line and a meaningful exit code."""
    if options.debug:
        return asyncio.run(coroutine)
    try:
        return _call(coroutine)
    except DatabaseError as exc:
        _fail(*_classify(exc))


def _call(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except DatabaseError:
        raise
    except Exception as exc:
        from dbfoundation.driver_errors import translate

        typed = translate(exc)
        if typed is None:
            _fail(EXIT_OTHER, f"{type(exc).__name__}: {exc}", "run again with --debug for the traceback.")
        raise typed from exc


def _classify(exc: DatabaseError) -> tuple[int, str, str | None]:
    if isinstance(exc, ConfigurationError):
        return EXIT_CONFIG, str(exc), "see 'dbf doctor' for the settings in effect."
    if isinstance(exc, DatabaseUnavailable):
        return EXIT_UNAVAILABLE, str(exc), None
    if isinstance(exc, MigrationLockTimeout | WriteTimeout):
        return EXIT_TIMEOUT, str(exc), None
    if isinstance(exc, ChecksumMismatch | DirtyMigration | MultipleHeadsError):
        return EXIT_REPAIR, str(exc), None
    return EXIT_OTHER, str(exc), "run again with --debug for the traceback."


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))  # noqa: T201 - machine-readable output goes to stdout


# -- Alembic ---------------------------------------------------------------------------------------------


@app.command()
def init(
    metadata: Annotated[
        str, typer.Option(help="Python expression env.py uses as target_metadata, e.g. Base.metadata.")
    ] = "None",
) -> None:
    """Create the migrations folder with a three-line env.py, script template and versions/."""
    from dbfoundation.migrations.scaffold import init as scaffold

    settings = _settings()
    try:
        written = scaffold(settings.migrations_path, metadata=metadata)
    except DatabaseError as exc:
        _fail(*_classify(exc))
    for path in written:
        out.print(f"created {path}")
    out.print("next: import your models' MetaData in env.py, then 'dbf revision --autogenerate -m \"init\"'")


@app.command()
def revision(
    message: Annotated[str, typer.Option("-m", "--message", help="What the revision does.")],
    autogenerate: Annotated[bool, typer.Option(help="Compare the models with the database to fill it in.")] = False,
) -> None:
    """Write a new revision file."""
    from dbfoundation import migrations

    path = _run(migrations.revision(_settings(), message, autogenerate=autogenerate))
    out.print(f"created {path}")


@app.command()
def upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Upgrade the database under the migration lock (no lock at all when already at head)."""
    from dbfoundation import migrations

    settings = _settings()
    with out.status(f"upgrading {settings.masked_url} to {revision}…"):
        changed = _run(migrations.upgrade(settings, revision))
    current = _run(migrations.current(settings))
    out.print(("upgraded to " if changed else "already at ") + (", ".join(current) or "base"))


@app.command()
def downgrade(revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 or base.")]) -> None:
    """Downgrade the database under the migration lock."""
    from dbfoundation import migrations

    settings = _settings()
    _run(migrations.downgrade(settings, revision))
    out.print("now at " + (", ".join(_run(migrations.current(settings))) or "base"))


@app.command()
def current(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the revisions the database is at, and whether that is head."""
    from dbfoundation import migrations

    state = _run(migrations.migration_state(_settings()))
    if state is None:
        _fail(EXIT_CONFIG, "no migrations folder found", "run 'dbf init' or pass --migrations PATH.")
    where = "at head" if state.is_at_head else "ahead of these scripts" if state.is_ahead else "behind head"
    if as_json:
        _print_json({"current": state.current, "heads": state.heads, "state": where})
        return
    out.print(f"{', '.join(state.current) or 'base'} ({where}; head is {', '.join(state.heads) or 'base'})")


@app.command()
def history(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the revisions from newest to oldest."""
    from dbfoundation import migrations

    try:
        rows = migrations.history(_settings())
    except DatabaseError as exc:
        _fail(*_classify(exc))
    if as_json:
        _print_json([{"revision": r, "down_revision": d, "message": m} for r, d, m in rows])
        return
    table = Table("revision", "down revision", "message")
    for rev, down, message in rows:
        table.add_row(rev, down or "base", message)
    out.print(table)


@app.command()
def check() -> None:
    """Compare the models with the migrations; exit 1 and print the missing migration if they differ."""
    from dbfoundation import migrations

    difference = _run(migrations.check(_settings()))
    if difference is None:
        out.print("models and migrations match")
        return
    out.print("[bold red]the models differ from the migrations[/]; a revision would contain:")
    print(difference)  # noqa: T201 - the rendered code, unstyled, so it can be copied
    raise typer.Exit(EXIT_DIFFERENCE)


# -- plain SQL -------------------------------------------------------------------------------------------


def _sql_folder(settings: Any, folder: str | None) -> str:
    return folder or settings.sql_migrations_path


FolderOption = Annotated[str | None, typer.Option(help="Folder of NNNN_name.sql files (DATABASE_SQL_MIGRATIONS_PATH).")]


@sql_app.command("upgrade")
def sql_upgrade(folder: FolderOption = None) -> None:
    """Apply every pending .sql file, each in one transaction with its version row."""
    from dbfoundation.migrations import sql_connection
    from dbfoundation.migrations.sql_runner import upgrade as run_upgrade

    settings = _settings()

    async def go() -> list[str]:
        async with sql_connection(settings) as connection:
            return await run_upgrade(
                connection, _sql_folder(settings, folder), lock_timeout_s=settings.migration_lock_timeout
            )

    applied = _run(go())
    out.print(f"applied {', '.join(applied)}" if applied else "nothing to apply")


@sql_app.command("status")
def sql_status(folder: FolderOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the .sql migrations with their state (applied, pending, dirty, edited)."""
    from dbfoundation.migrations import sql_connection
    from dbfoundation.migrations.sql_runner import status as run_status

    settings = _settings()

    async def go() -> list[Any]:
        async with sql_connection(settings) as connection:
            return await run_status(connection, _sql_folder(settings, folder))

    rows = _run(go())

    def state(row: Any) -> str:
        if row.is_dirty:
            return "dirty"
        if not row.is_applied:
            return "pending"
        return "applied" if row.checksum_matches is not False else "edited since applied"

    if as_json:
        _print_json(
            [{"version": r.version, "name": r.name, "state": state(r), "applied_at": r.applied_at} for r in rows]
        )
        return
    table = Table("version", "name", "state", "applied at")
    for row in rows:
        table.add_row(f"{row.version:04d}", row.name, state(row), str(row.applied_at or ""))
    out.print(table)


@sql_app.command("repair")
def sql_repair(
    accept: Annotated[int | None, typer.Option(help="VERSION: store the edited file's checksum.")] = None,
    mark_applied: Annotated[
        int | None, typer.Option(help="VERSION: record it applied (a dirty file finished by hand).")
    ] = None,
    forget: Annotated[int | None, typer.Option(help="VERSION: delete its row so the next upgrade reruns it.")] = None,
    folder: FolderOption = None,
) -> None:
    """Settle one version after checking the database by hand: --accept, --mark-applied or --forget VERSION."""
    from dbfoundation.migrations import sql_connection
    from dbfoundation.migrations.sql_runner import repair as run_repair

    chosen = [(name, v) for name, v in (("accept", accept), ("mark-applied", mark_applied), ("forget", forget)) if v]
    if len(chosen) != 1:
        _fail(2, "give exactly one of --accept, --mark-applied or --forget with a version number", "dbf sql status")
    action, version = chosen[0]
    settings = _settings()

    async def go() -> None:
        async with sql_connection(settings) as connection:
            await run_repair(
                connection,
                _sql_folder(settings, folder),
                version,
                action=action,  # type: ignore[arg-type]  # one of the three literals above
                lock_timeout_s=settings.migration_lock_timeout,
            )

    _run(go())
    out.print(f"{version:04d}: {action} done")


# -- operations ------------------------------------------------------------------------------------------


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the settings (password masked), PRAGMAs in effect, file sizes, pools, migration state, warnings."""
    from dbfoundation.doctor import diagnose

    report = _run(diagnose(_settings()))
    if as_json:
        _print_json(report)
        return
    for section, values in report.items():
        if section == "warnings":
            continue
        table = Table(title=section, show_header=False, title_justify="left")
        for key, value in values.items():
            table.add_row(key, str(value))
        out.print(table)
    for warning in report["warnings"]:
        out.print(f"[yellow]warning:[/] {warning}")
    if not report["warnings"]:
        out.print("[green]no warnings[/]")


@app.command()
def health(deadline: Annotated[float, typer.Option(help="Seconds the probe may take.")] = 1.0) -> None:
    """Run the readiness check once and print its health+json body; exit 0 on pass or warn, 1 on fail."""
    from dbfoundation import Database

    async def go() -> Any:
        db = Database(_settings())
        await db.start(require_database=False)
        try:
            return await db.health(deadline_s=deadline)
        finally:
            await db.stop()

    report = _run(go())
    _print_json(report.to_dict())
    if report.status == "fail":
        raise typer.Exit(EXIT_DIFFERENCE)


def main() -> None:
    """Console entry point."""
    app()

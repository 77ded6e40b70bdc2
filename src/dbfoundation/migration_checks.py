"""Alembic checks to run in a project's own test suite, switched on with one line in a test module:

```python
from dbfoundation.migration_checks import *  # noqa: F403 - the four checks below
```

| check | fails when |
| --- | --- |
| `test_single_head` | the scripts have several heads (two branches merged without a merge revision) |
| `test_upgrade_from_empty` | an empty database cannot be upgraded to head |
| `test_up_down_round_trip` | a revision cannot be upgraded one by one, downgraded one by one, then upgraded again |
| `test_models_match_migrations` | the models differ from what the migrations build (the would-be migration is shown) |

Each runs on a fresh, empty database of the configured backend (`dbf_empty_database_url`, from the pytest
plugin), never on the rollback-isolated one: Alembic commits. The migrations folder comes from
`--dbf-migrations` / ini `dbf_migrations` / `DATABASE_MIGRATIONS_PATH`. A downgrade that raises
NotImplementedError ends the downward walk there (some migrations cannot be undone); the check then
upgrades back to head. Run them on PostgreSQL too: SQLite cannot express every schema change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dbfoundation.errors import MigrationError
from dbfoundation.settings import DatabaseSettings

__all__ = [
    "test_models_match_migrations",
    "test_single_head",
    "test_up_down_round_trip",
    "test_upgrade_from_empty",
]

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    # Sync tests with a private loop on a worker thread: they work in pytest-asyncio's strict and auto
    # modes alike, whatever loop the rest of the suite uses.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbf-migration-check") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _settings(url: str, migrations: Path | None) -> DatabaseSettings:
    if migrations is None:
        pytest.fail(
            "dbfoundation.migration_checks needs the migrations folder: pass --dbf-migrations PATH, or set the "
            "ini option dbf_migrations or DATABASE_MIGRATIONS_PATH.",
            pytrace=False,
        )
    return DatabaseSettings(url=url, migrations_path=str(migrations))


def _revisions_oldest_first(settings: DatabaseSettings) -> list[tuple[str, str | None]]:
    """(revision, down_revision) for every script, each after the ones it depends on."""
    from dbfoundation.migrations import history

    return [(revision, down) for revision, down, _ in reversed(history(settings))]


def _undoable(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, NotImplementedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def test_single_head(dbf_empty_database_url: str, dbf_migrations_path: Path | None) -> None:
    """The migration scripts have exactly one head, so `upgrade head` means one thing on every deploy."""
    from dbfoundation.migrations.alembic import alembic_config, script_heads

    settings = _settings(dbf_empty_database_url, dbf_migrations_path)
    heads = script_heads(alembic_config(settings))
    if len(heads) != 1:
        pytest.fail(
            f"the migrations have {len(heads)} heads ({', '.join(heads) or 'none'}); "
            + (
                "merge them with a merge revision: alembic merge heads -m 'merge'."
                if heads
                else "add a first revision: dbf revision -m 'initial' --autogenerate."
            ),
            pytrace=False,
        )


def test_upgrade_from_empty(dbf_empty_database_url: str, dbf_migrations_path: Path | None) -> None:
    """An empty database upgrades to head, and then reports being at head."""
    from dbfoundation.migrations import upgrade

    settings = _settings(dbf_empty_database_url, dbf_migrations_path)
    _run(upgrade(settings, "head"))
    _require_head(settings)


def _require_head(settings: DatabaseSettings) -> None:
    from dbfoundation.migrations import migration_state

    state = _run(migration_state(settings))
    if state is None or not state.is_at_head:
        shown = "no migrations folder" if state is None else f"{state.current or 'no revision'}, not {state.heads}"
        pytest.fail(f"after the upgrade the database is at {shown}", pytrace=False)


def test_up_down_round_trip(dbf_empty_database_url: str, dbf_migrations_path: Path | None) -> None:
    """Every revision upgrades one at a time, downgrades one at a time to base, and upgrades again to head."""
    from dbfoundation.migrations import downgrade, upgrade

    settings = _settings(dbf_empty_database_url, dbf_migrations_path)
    revisions = _revisions_oldest_first(settings)
    for revision, _ in revisions:
        try:
            _run(upgrade(settings, revision))
        except Exception as exc:
            pytest.fail(f"upgrade to {revision} failed: {type(exc).__name__}: {exc}", pytrace=False)
    for revision, down in reversed(revisions):
        target = down if isinstance(down, str) and "," not in down else ("base" if down is None else "-1")
        try:
            _run(downgrade(settings, target))
        except Exception as exc:
            if _undoable(exc):
                break  # this revision says it cannot be undone: the walk down ends here
            pytest.fail(f"downgrade of {revision} (to {target}) failed: {type(exc).__name__}: {exc}", pytrace=False)
    try:
        _run(upgrade(settings, "head"))
    except Exception as exc:
        pytest.fail(f"upgrading again after the downgrades failed: {type(exc).__name__}: {exc}", pytrace=False)
    _require_head(settings)


def test_models_match_migrations(dbf_empty_database_url: str, dbf_migrations_path: Path | None) -> None:
    """The models equal what the migrations build; on failure the missing migration is shown as code."""
    from dbfoundation.migrations import check, upgrade

    settings = _settings(dbf_empty_database_url, dbf_migrations_path)
    _run(upgrade(settings, "head"))
    try:
        difference = _run(check(settings))
    except MigrationError as exc:
        pytest.fail(f"cannot compare the models with the migrations: {exc}", pytrace=False)
    if difference is not None:
        pytest.fail(
            "the models differ from the migrations; write a revision for this change "
            "(dbf revision -m '...' --autogenerate). The migration that is missing:\n" + difference,
            pytrace=False,
        )

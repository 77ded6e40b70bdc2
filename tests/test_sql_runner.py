"""The plain-SQL runner: ordered files, one transaction per file, checksums, dirty state, races and crashes."""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from _sql_runner_helpers import (
    CHILD_APPLICATION_NAME,
    fetch_all,
    is_sqlite,
    kill_hard,
    raw_connection,
    read_result,
    start_child,
    table_names,
    write_files,
)
from _waiting import wait_for_file, wait_until
from dbfoundation.errors import (
    ChecksumMismatch,
    ConfigurationError,
    DirtyMigration,
    MigrationError,
    MigrationLockTimeout,
)
from dbfoundation.migrations import sql_runner
from dbfoundation.migrations._sql_files import split_postgres
from dbfoundation.migrations.lock import sqlite_migration_lock

LOG_TABLE = "CREATE TABLE migration_log (file TEXT NOT NULL, n INTEGER NOT NULL);\n"


def logged(version: str, n: int) -> str:
    return f"INSERT INTO migration_log (file, n) VALUES ('{version}', {n});\n"


async def upgrade(url: str, folder: Path, lock_timeout_s: float = 10.0) -> list[str]:
    async with raw_connection(url) as connection:
        return await sql_runner.upgrade(connection, folder, lock_timeout_s=lock_timeout_s)


async def version_rows(url: str) -> list[tuple[int, str, str]]:
    rows = await fetch_all(url, "SELECT version, name, state FROM dbf_sql_migrations ORDER BY version")
    return [(int(v), str(name), str(state)) for v, name, state in rows]


async def test_upgrade_applies_files_in_numeric_order_and_records_them(backend_url: str, tmp_path: Path) -> None:
    """Files run by number (2 before 10), each recorded with its sha256, UTC time and duration; a rerun does nothing."""
    folder = write_files(
        tmp_path / "sql",
        {
            "10_third.sql": logged("10", 3),
            "1_first.sql": "-- the log table\n" + LOG_TABLE + logged("1", 1),
            "2_second.sql": logged("2", 2),
            "README.md": "not a migration",
        },
    )
    before = datetime.now(UTC)
    assert await upgrade(backend_url, folder) == ["1_first.sql", "2_second.sql", "10_third.sql"]
    assert await fetch_all(backend_url, "SELECT file, n FROM migration_log ORDER BY n") == [
        ("1", 1),
        ("2", 2),
        ("10", 3),
    ]
    rows = await fetch_all(
        backend_url, "SELECT version, name, checksum, applied_at, duration_ms, state FROM dbf_sql_migrations"
    )
    for version, name, checksum, applied_at, duration_ms, state in rows:
        assert checksum == hashlib.sha256((folder / name).read_bytes()).hexdigest()
        moment = datetime.fromisoformat(applied_at) if isinstance(applied_at, str) else applied_at
        assert moment.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= moment <= datetime.now(UTC)
        assert duration_ms >= 0
        assert (version, state) in {(1, "applied"), (2, "applied"), (10, "applied")}
    assert await upgrade(backend_url, folder) == []
    async with raw_connection(backend_url) as connection:
        listing = await sql_runner.status(connection, folder)
    assert [(s.version, s.is_applied, s.checksum_matches, s.is_dirty) for s in listing] == [
        (1, True, True, False),
        (2, True, True, False),
        (10, True, True, False),
    ]


async def test_six_processes_racing_apply_each_file_exactly_once(backend_url: str, tmp_path: Path) -> None:
    """Six OS processes released together all succeed, and every file runs exactly once."""
    slow = (
        "INSERT INTO filler (v) SELECT x FROM (WITH RECURSIVE c(x) AS "
        "(SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) SELECT x FROM c) AS s;\n"
    )
    folder = write_files(
        tmp_path / "sql",
        {
            "0001_log.sql": LOG_TABLE + "CREATE TABLE filler (v INTEGER);\n" + logged("0001", 1) + slow,
            "0002_second.sql": "CREATE TABLE second (id INTEGER);\n" + logged("0002", 2) + slow,
            "0003_third.sql": "CREATE TABLE third (id INTEGER);\n" + logged("0003", 3) + slow,
        },
    )
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    results = [tmp_path / f"result-{i}.json" for i in range(6)]
    children = [
        start_child("upgrade", backend_url, str(folder), str(results[i]), str(barrier), str(i)) for i in range(6)
    ]
    try:
        await wait_until(lambda: len(list(barrier.glob("ready-*"))) == 6, "six children at the barrier", 60)
        (barrier / "go").touch()
        await wait_until(lambda: all(child.poll() is not None for child in children), "six children to finish", 60)
    finally:
        for child in children:
            kill_hard(child)
    outcomes = [read_result(path) for path in results]
    assert [o.get("error") for o in outcomes] == [None] * 6
    assert [child.returncode for child in children] == [0] * 6
    first_finish = min(o["finished"] for o in outcomes)
    assert all(o["started"] < first_finish for o in outcomes)  # they really overlapped
    applied = [name for o in outcomes for name in o["applied"]]
    assert sorted(applied) == ["0001_log.sql", "0002_second.sql", "0003_third.sql"]
    assert await fetch_all(backend_url, "SELECT file, count(*) FROM migration_log GROUP BY file ORDER BY file") == [
        ("0001", 1),
        ("0002", 1),
        ("0003", 1),
    ]
    assert await fetch_all(backend_url, "SELECT count(*) FROM filler") == [(300000,)]
    assert await version_rows(backend_url) == [
        (1, "0001_log.sql", "applied"),
        (2, "0002_second.sql", "applied"),
        (3, "0003_third.sql", "applied"),
    ]


async def test_kill_9_between_ddl_and_commit_leaves_the_file_unapplied(backend_url: str, tmp_path: Path) -> None:
    """A runner SIGKILLed mid-file leaves it neither applied nor recorded; the next run applies it and unlocks."""
    pause = (
        "SELECT dbf_test_pause();\n"
        if is_sqlite(backend_url)
        else f"SELECT pg_sleep(CASE WHEN current_setting('application_name') = '{CHILD_APPLICATION_NAME}' "
        "THEN 60 ELSE 0 END);\n"
    )
    folder = write_files(
        tmp_path / "sql",
        {
            "0001_log.sql": LOG_TABLE + logged("0001", 1),
            "0002_interrupted.sql": "CREATE TABLE interrupted (id INTEGER);\n" + logged("0002", 2) + pause,
        },
    )
    signal_file = tmp_path / "paused"
    child = start_child("upgrade", backend_url, str(folder), str(tmp_path / "result.json"), "--pause", str(signal_file))
    try:
        if is_sqlite(backend_url):
            await wait_for_file(signal_file, child)
        else:
            await _wait_for_sleeping(backend_url)
    finally:
        kill_hard(child)
    assert child.returncode == -9
    assert "interrupted" not in await table_names(backend_url)
    assert await fetch_all(backend_url, "SELECT file FROM migration_log") == [("0001",)]
    assert await version_rows(backend_url) == [(1, "0001_log.sql", "applied")]

    async with raw_connection(backend_url) as connection:
        if is_sqlite(backend_url):
            await connection.create_function("dbf_test_pause", 0, lambda: None)
        assert await sql_runner.upgrade(connection, folder, lock_timeout_s=20) == ["0002_interrupted.sql"]
    assert "interrupted" in await table_names(backend_url)
    assert await fetch_all(backend_url, "SELECT file FROM migration_log ORDER BY file") == [("0001",), ("0002",)]
    assert [state for _, _, state in await version_rows(backend_url)] == ["applied", "applied"]
    async with raw_connection(backend_url) as connection:  # the lock was released: a new run gets it at once
        (folder / "0003_after.sql").write_text(logged("0003", 3))
        assert await sql_runner.upgrade(connection, folder, lock_timeout_s=0.5) == ["0003_after.sql"]


async def _wait_for_sleeping(url: str, application_name: str = CHILD_APPLICATION_NAME) -> None:
    query = (
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND datname = current_database() "
        f"AND application_name = '{application_name}' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()"
    )
    deadline = time.monotonic() + 20
    while not await fetch_all(url, query):
        assert time.monotonic() < deadline, f"no session of {application_name} reached pg_sleep"
        await asyncio.sleep(0.02)


async def test_checksum_mismatch_names_file_and_checksums_until_accepted(backend_url: str, tmp_path: Path) -> None:
    """Editing an applied file stops the run (naming file, both checksums, the repair); repair accept clears it."""
    folder = write_files(tmp_path / "sql", {"0001_log.sql": LOG_TABLE + logged("0001", 1)})
    await upgrade(backend_url, folder)
    stored = hashlib.sha256((folder / "0001_log.sql").read_bytes()).hexdigest()
    (folder / "0001_log.sql").write_text(LOG_TABLE + logged("0001", 1) + "-- a harmless edit\n")
    (folder / "0002_next.sql").write_text(logged("0002", 2))
    current = hashlib.sha256((folder / "0001_log.sql").read_bytes()).hexdigest()

    with pytest.raises(ChecksumMismatch) as caught:
        await upgrade(backend_url, folder)
    message = str(caught.value)
    assert str(folder / "0001_log.sql") in message
    assert stored in message
    assert current in message
    assert "dbf sql repair --accept 0001" in message
    assert await fetch_all(backend_url, "SELECT file FROM migration_log") == [("0001",)]  # 0002 did not run

    async with raw_connection(backend_url) as connection:
        listing = await sql_runner.status(connection, folder)
        assert [(s.name, s.checksum_matches, s.is_applied) for s in listing] == [
            ("0001_log.sql", False, True),
            ("0002_next.sql", None, False),
        ]
        await sql_runner.repair(connection, folder, 1, action="accept")
        assert await sql_runner.upgrade(connection, folder) == ["0002_next.sql"]
    [(checksum,)] = await fetch_all(backend_url, "SELECT checksum FROM dbf_sql_migrations WHERE version = 1")
    assert checksum == current


async def test_failed_non_transactional_file_stays_dirty_until_marked_applied(backend_url: str, tmp_path: Path) -> None:
    """A transaction=false file that fails stays dirty; every run refuses, naming it, until repair mark-applied."""
    folder = write_files(
        tmp_path / "sql",
        {
            "0001_outside.sql": "-- adds two tables\n-- dbf: transaction=false\n"
            "CREATE TABLE kept (id INTEGER);\nCREATE TABLE kept (id INTEGER);\n",
            "0002_next.sql": "CREATE TABLE next_one (id INTEGER);\n",
        },
    )
    with pytest.raises(DirtyMigration, match="dbf sql repair --mark-applied 0001") as caught:
        await upgrade(backend_url, folder)
    assert str(folder / "0001_outside.sql") in str(caught.value)
    assert caught.value.__cause__ is not None  # the driver's error, for the details
    assert "kept" in await table_names(backend_url)  # the first statement committed on its own
    assert await version_rows(backend_url) == [(1, "0001_outside.sql", "dirty")]

    for _ in range(2):
        with pytest.raises(DirtyMigration, match=r"0001_outside\.sql"):
            await upgrade(backend_url, folder)
    assert "next_one" not in await table_names(backend_url)

    async with raw_connection(backend_url) as connection:
        [entry, _] = await sql_runner.status(connection, folder)
        assert (entry.is_dirty, entry.is_applied) == (True, False)
        await sql_runner.repair(connection, folder, 1, action="mark-applied")
        assert await sql_runner.upgrade(connection, folder) == ["0002_next.sql"]
    assert [state for _, _, state in await version_rows(backend_url)] == ["applied", "applied"]


async def test_forgetting_a_dirty_file_lets_the_fixed_file_run_again(backend_url: str, tmp_path: Path) -> None:
    """Repair forget deletes the dirty row, so the corrected file runs again on the next upgrade."""
    folder = write_files(
        tmp_path / "sql",
        {"0001_outside.sql": "-- dbf: transaction=false\nCREATE TABLE t (id INTEGER);\nINSERT INTO nope VALUES (1);\n"},
    )
    with pytest.raises(DirtyMigration):
        await upgrade(backend_url, folder)
    async with raw_connection(backend_url) as connection:
        await connection.execute("DROP TABLE t")  # the hand fix: undo what the file did
        await sql_runner.repair(connection, folder, 1, action="forget")
        assert await version_rows(backend_url) == []
        (folder / "0001_outside.sql").write_text("-- dbf: transaction=false\nCREATE TABLE t (id INTEGER);\n")
        assert await sql_runner.upgrade(connection, folder) == ["0001_outside.sql"]
    assert await version_rows(backend_url) == [(1, "0001_outside.sql", "applied")]


async def test_non_transactional_file_can_hold_statements_refused_in_a_transaction(
    backend_url: str, tmp_path: Path
) -> None:
    """transaction=false runs statement by statement outside a transaction (VACUUM; CREATE INDEX CONCURRENTLY)."""
    if is_sqlite(backend_url):
        outside = "CREATE TABLE v (x INTEGER);\nVACUUM;\n"
        inside, refusal = "CREATE TABLE w (x INTEGER);\nVACUUM;\n", "cannot VACUUM from within a transaction"
    else:
        outside = (
            "CREATE TABLE v (x INTEGER);\n"
            "DO $body$ BEGIN INSERT INTO v VALUES (1); INSERT INTO v VALUES (2); END $body$;\n"
            "CREATE INDEX CONCURRENTLY v_x ON v (x); -- a comment; with a semicolon\n"
        )
        inside = "CREATE TABLE w (x INTEGER);\nCREATE INDEX CONCURRENTLY w_x ON w (x);\n"
        refusal = "cannot run inside a transaction block"
    folder = write_files(
        tmp_path / "sql",
        {"0001_outside.sql": "-- dbf: transaction=false\n" + outside, "0002_inside.sql": inside},
    )
    with pytest.raises(MigrationError, match=rf"0002_inside\.sql failed( at line 2)?: .*{refusal}"):
        await upgrade(backend_url, folder)
    assert await version_rows(backend_url) == [(1, "0001_outside.sql", "applied")]
    assert "w" not in await table_names(backend_url)


async def test_failing_file_rolls_back_whole_and_names_file_and_line(backend_url: str, tmp_path: Path) -> None:
    """A failing file leaves no trace (no table, no row), names itself and the line, and later files do not run."""
    folder = write_files(
        tmp_path / "sql",
        {
            "0001_log.sql": LOG_TABLE + logged("0001", 1),
            "0002_broken.sql": "CREATE TABLE half (id INTEGER);\n"
            + logged("0002", 2)
            + "INSERT INTO nowhere VALUES (1);\n",
            "0003_later.sql": "CREATE TABLE later (id INTEGER);\n",
        },
    )
    with pytest.raises(MigrationError, match=r"0002_broken\.sql failed at line 3: .*nowhere") as caught:
        await upgrade(backend_url, folder)
    assert "run upgrade again" in str(caught.value)
    assert await table_names(backend_url) == {"migration_log", "dbf_sql_migrations"}
    assert await fetch_all(backend_url, "SELECT file FROM migration_log") == [("0001",)]
    assert await version_rows(backend_url) == [(1, "0001_log.sql", "applied")]
    (folder / "0002_broken.sql").write_text("CREATE TABLE half (id INTEGER);\n")
    assert await upgrade(backend_url, folder) == ["0002_broken.sql", "0003_later.sql"]


async def test_sqlite_statements_split_like_the_sqlite_shell(tmp_path: Path) -> None:
    """Semicolons inside strings, comments and trigger bodies do not split a SQLite statement."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    folder = write_files(
        tmp_path / "sql",
        {
            "0001_trigger.sql": "CREATE TABLE a (x TEXT); CREATE TABLE b (x TEXT);\n"
            "/* a comment; with a semicolon */\n"
            "CREATE TRIGGER copy AFTER INSERT ON a BEGIN\n  INSERT INTO b VALUES (new.x || ';');\nEND;\n"
            "INSERT INTO a VALUES ('one;two') -- no final semicolon\n",
        },
    )
    await upgrade(url, folder)
    assert await fetch_all(url, "SELECT x FROM b") == [("one;two;",)]


async def test_file_text_reaches_the_database_unchanged(backend_url: str, tmp_path: Path) -> None:
    """Dollar signs, question marks and non-ASCII text in a file are data, not parameters, on both backends."""
    folder = write_files(
        tmp_path / "sql",
        {"0001_prices.sql": "CREATE TABLE prices (label TEXT);\nINSERT INTO prices VALUES ('$1 or ?2 — ünï');\n"},
    )
    await upgrade(backend_url, folder)
    assert await fetch_all(backend_url, "SELECT label FROM prices") == [("$1 or ?2 — ünï",)]


async def test_fast_path_at_head_skips_the_lock_but_pending_files_wait_for_it(backend_url: str, tmp_path: Path) -> None:
    """With every file applied, upgrade returns without the lock; with a file pending, it waits for the lock."""
    folder = write_files(tmp_path / "sql", {"0001_log.sql": LOG_TABLE})
    await upgrade(backend_url, folder)
    ready = tmp_path / "holding"
    holder = start_child("hold-lock", backend_url, str(ready))
    try:
        await wait_for_file(ready, holder)
        assert await upgrade(backend_url, folder, lock_timeout_s=0.2) == []
        (folder / "0002_pending.sql").write_text("CREATE TABLE pending (id INTEGER);\n")
        with pytest.raises(MigrationLockTimeout, match=r"held by .*pid"):
            await upgrade(backend_url, folder, lock_timeout_s=0.2)
    finally:
        kill_hard(holder)
    assert await upgrade(backend_url, folder) == ["0002_pending.sql"]


async def test_missing_folder_is_a_configuration_error(backend_url: str, tmp_path: Path) -> None:
    """A folder that does not exist is an error naming DATABASE_SQL_MIGRATIONS_PATH, never a silent no-op."""
    missing = tmp_path / "nowhere"
    expected = f"DATABASE_SQL_MIGRATIONS_PATH={missing} cannot be used: the folder does not exist; create it"
    async with raw_connection(backend_url) as connection:
        with pytest.raises(ConfigurationError, match=re.escape(expected)):
            await sql_runner.upgrade(connection, missing)
        with pytest.raises(ConfigurationError, match=re.escape(expected)):
            await sql_runner.status(connection, missing)


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ({"create_users.sql": "SELECT 1;"}, "create_users.sql is not named NNNN_name.sql"),
        ({"0001 users.sql": "SELECT 1;"}, "0001 users.sql is not named NNNN_name.sql"),
        ({"0001_a.sql": "SELECT 1;", "001_b.sql": "SELECT 1;"}, "0001_a.sql and 001_b.sql share version 1"),
        ({"0001_a.sql": "-- dbf: transaction=flase\nSELECT 1;"}, "0001_a.sql has an unknown directive"),
    ],
)
async def test_badly_named_or_marked_files_are_errors_naming_them(
    tmp_path: Path, files: dict[str, str], named: str
) -> None:
    """A misnamed .sql file, a duplicated version or a mistyped directive fails before anything runs."""
    folder = write_files(tmp_path / "sql", files)
    async with raw_connection(f"sqlite:///{tmp_path / 'app.db'}") as connection:
        with pytest.raises(ConfigurationError, match=re.escape(named)):
            await sql_runner.upgrade(connection, folder)
    assert not (tmp_path / "app.db-migratelock").exists()


async def test_connection_inside_a_transaction_is_refused(backend_url: str, tmp_path: Path) -> None:
    """The runner commits file by file, so a connection with an open transaction is refused, untouched."""
    folder = write_files(tmp_path / "sql", {"0001_a.sql": "CREATE TABLE a (id INTEGER);\n"})
    async with raw_connection(backend_url) as connection:
        if is_sqlite(backend_url):
            await connection.execute("BEGIN")
        else:
            transaction = connection.transaction()
            await transaction.start()
        with pytest.raises(MigrationError, match="inside a transaction"):
            await sql_runner.upgrade(connection, folder)
        assert connection.in_transaction if is_sqlite(backend_url) else connection.is_in_transaction()


async def test_sqlite_isolation_level_is_restored_after_the_run(tmp_path: Path) -> None:
    """The runner turns sqlite3's own transaction handling off only for its run, even when a file fails."""
    folder = write_files(tmp_path / "sql", {"0001_bad.sql": "CREATE TABLE a (id INTEGER);\nSELECT nope;\n"})
    async with raw_connection(f"sqlite:///{tmp_path / 'app.db'}") as connection:
        assert connection.isolation_level == ""
        with pytest.raises(MigrationError):
            await sql_runner.upgrade(connection, folder)
        assert connection.isolation_level == ""
        assert not connection.in_transaction


async def test_status_lists_rows_whose_file_is_gone(backend_url: str, tmp_path: Path) -> None:
    """A recorded version whose file was deleted stays visible in status, and does not block upgrade."""
    folder = write_files(tmp_path / "sql", {"0001_a.sql": "CREATE TABLE a (id INTEGER);\n"})
    await upgrade(backend_url, folder)
    (folder / "0001_a.sql").unlink()
    (folder / "0002_b.sql").write_text("CREATE TABLE b (id INTEGER);\n")
    assert await upgrade(backend_url, folder) == ["0002_b.sql"]
    async with raw_connection(backend_url) as connection:
        listing = await sql_runner.status(connection, folder)
    assert [(s.name, s.has_file, s.is_applied, s.checksum_matches) for s in listing] == [
        ("0001_a.sql", False, True, None),
        ("0002_b.sql", True, True, True),
    ]


async def test_repair_refuses_what_it_cannot_do(backend_url: str, tmp_path: Path) -> None:
    """Repair names the version and the reason when the action has nothing to act on."""
    folder = write_files(tmp_path / "sql", {"0001_a.sql": "CREATE TABLE a (id INTEGER);\n"})
    async with raw_connection(backend_url) as connection:
        with pytest.raises(ConfigurationError, match=r"version=0001 cannot be used: 0001_a\.sql was never applied"):
            await sql_runner.repair(connection, folder, 1, action="accept")
        with pytest.raises(ConfigurationError, match=r"version=0007 .* no row for it"):
            await sql_runner.repair(connection, folder, 7, action="forget")
        with pytest.raises(ConfigurationError, match="action=redo cannot be used"):
            await sql_runner.repair(connection, folder, 1, action="redo")  # type: ignore[arg-type]


async def test_upgrade_holds_the_sqlite_lock_file_while_it_applies(tmp_path: Path) -> None:
    """A pending run waits for the -migratelock file held in this process, and reports the lock on timeout."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    folder = write_files(tmp_path / "sql", {"0001_a.sql": "CREATE TABLE a (id INTEGER);\n"})
    async with sqlite_migration_lock(tmp_path / "app.db", timeout_s=1):
        with pytest.raises(MigrationError, match=r"app\.db-migratelock"):
            await upgrade(url, folder, lock_timeout_s=0.1)
    assert await upgrade(url, folder) == ["0001_a.sql"]


async def test_cancelled_upgrade_rolls_back_the_file_and_releases_the_lock(backend_url: str, tmp_path: Path) -> None:
    """Cancelling upgrade in the middle of a file rolls the file back, frees the lock and leaves the connection idle."""
    entered, release = threading.Event(), threading.Event()
    stall = "SELECT dbf_test_block();\n" if is_sqlite(backend_url) else "SELECT pg_sleep(30);\n"
    folder = write_files(tmp_path / "sql", {"0001_stalls.sql": "CREATE TABLE stalled (id INTEGER);\n" + stall})
    async with raw_connection(backend_url) as connection:
        if is_sqlite(backend_url):

            def block() -> None:
                entered.set()
                release.wait(10)

            await connection.create_function("dbf_test_block", 0, block)
        running = asyncio.create_task(sql_runner.upgrade(connection, folder))
        try:
            if is_sqlite(backend_url):
                assert await asyncio.to_thread(entered.wait, 10)
            else:
                await _wait_for_sleeping(backend_url, "dbf-test")
            running.cancel()
        finally:
            release.set()  # lets the SQLite worker thread finish the statement, then roll back
        with pytest.raises(asyncio.CancelledError):
            await running
        if is_sqlite(backend_url):
            assert not connection.in_transaction
            assert connection.isolation_level == ""
        else:
            assert not connection.is_in_transaction()
            assert not connection.is_closed()
        assert "stalled" not in await table_names(backend_url)
        assert await version_rows(backend_url) == []
        # the lock is free: a run that needs it gets it at once
        (folder / "0001_stalls.sql").write_text("CREATE TABLE fine (id INTEGER);\n")
        async with raw_connection(backend_url) as other:
            assert await sql_runner.upgrade(other, folder, lock_timeout_s=0.5) == ["0001_stalls.sql"]


def test_postgres_split_cuts_only_at_top_level_semicolons() -> None:
    """Semicolons in strings, E-strings, quoted names, nested comments and dollar bodies do not cut a statement."""
    text = (
        "-- leading; comment\n"
        "SELECT 'a;b', E'c\\';d', \"we;ird\";\n"
        "/* outer /* inner; */ still; comment */ SELECT $$x;y$$;\n"
        "CREATE FUNCTION f() RETURNS int AS $fn$ BEGIN RETURN 1; END $fn$ LANGUAGE plpgsql;\n"
        "SELECT $1::int -- a parameter is no dollar quote\n;\n"
        "-- trailing comment only\n"
    )
    statements = split_postgres(text)
    assert [s.sql.strip().split()[0:2] for s in statements] == [
        ["--", "leading;"],
        ["/*", "outer"],
        ["CREATE", "FUNCTION"],
        ["SELECT", "$1::int"],
    ]
    assert [s.line for s in statements] == [1, 3, 4, 5]
    assert statements[0].sql.rstrip().endswith('"we;ird";')


async def test_in_memory_sqlite_database_migrates_without_a_lock_file(tmp_path: Path) -> None:
    """An in-memory database has no other connection to exclude, so it migrates with no lock file anywhere."""
    folder = write_files(tmp_path / "sql", {"0001_a.sql": "CREATE TABLE a (id INTEGER);\n"})
    async with raw_connection("sqlite:///:memory:") as connection:
        assert await sql_runner.upgrade(connection, folder) == ["0001_a.sql"]
        assert await sql_runner.upgrade(connection, folder) == []
    assert _lock_files(tmp_path) == _lock_files(Path.cwd()) == []


def _lock_files(folder: Path) -> list[Path]:
    return list(folder.glob("*-migratelock"))

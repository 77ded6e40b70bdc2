"""The background WAL checkpointer of a SQLite Database: checkpoints happen beside the writer, not in it.

SQLite's auto-checkpoint runs inside the COMMIT that crosses 1,000 WAL pages: that writer copies the
pages into the database file and fsyncs it while every writer queued behind it waits (measured: p99 of
a 64-task group commit 30 ms with it, 11-22 ms without). So the writer connections turn it off
(`wal_autocheckpoint = 0`, set in pragmas.PragmaPlan when this checkpointer runs) and this task runs a
PASSIVE checkpoint on its own connection, off the event loop, whenever the WAL changed: PASSIVE waits
for nobody, and the writer keeps appending meanwhile.

PASSIVE cannot reset a WAL that readers keep using (sqlite.org/wal.html, checkpoint starvation), so a WAL
past DATABASE_SQLITE_JOURNAL_SIZE_LIMIT that has not restarted since the last size check gets a TRUNCATE
checkpoint in the write slot. One that restarts is left alone: SQLite truncates it to the limit itself at
the commit that restarts it, and a TRUNCATE stops every writer while it copies and syncs (350-500 ms once
per check interval at 20,000 inserts/s, where the WAL restarts many times a second).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

__all__ = ["PASSIVE_EVERY_S", "Checkpointer"]

logger = logging.getLogger("dbfoundation")

PASSIVE_EVERY_S = 0.2  # how often the WAL is looked at; a checkpoint runs only if it changed


class Checkpointer:
    """Owns the checkpoint connection; `run()` loops until cancelled, `close()` frees the connection."""

    def __init__(
        self,
        path: Path,
        *,
        truncate_every_s: float,
        size_limit: int,
        truncate_in_write_slot: Callable[[], Awaitable[None]],
    ) -> None:
        self._path = path
        self._wal = path.with_name(path.name + "-wal")
        self._truncate_every_s = truncate_every_s
        self._size_limit = size_limit
        self._truncate = truncate_in_write_slot
        self._connection: sqlite3.Connection | None = None
        self._using = threading.Lock()  # a cancelled run() may leave a checkpoint running on its thread
        self._seen: tuple[int, int] | None = None  # (size, mtime_ns) of the WAL at the last checkpoint
        self._generation = self._wal_generation()  # the WAL's header at the last size check (or start)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_size_check = loop.time() + self._truncate_every_s
        while True:
            await asyncio.sleep(min(PASSIVE_EVERY_S, self._truncate_every_s))
            try:
                stat = self._wal.stat()
            except OSError:
                continue
            if (stat.st_size, stat.st_mtime_ns) != self._seen:
                try:
                    await asyncio.to_thread(self._passive)
                except sqlite3.Error:
                    logger.warning("WAL checkpoint of %s failed; will retry", self._path, exc_info=True)
                else:
                    self._seen = (stat.st_size, stat.st_mtime_ns)
            if loop.time() >= next_size_check:
                next_size_check = loop.time() + self._truncate_every_s
                await self._limit_size(stat.st_size)

    async def _limit_size(self, size: int) -> None:
        """TRUNCATE (in the write slot) a WAL of `size` bytes past the limit that has not restarted since
        the last call."""
        generation, self._generation = self._generation, self._wal_generation()
        if self._size_limit < 0 or size <= self._size_limit or self._generation != generation:
            return
        try:
            await self._truncate()
            self._seen = None
        except Exception:
            logger.warning("WAL checkpoint of %s failed; will retry", self._path, exc_info=True)

    def _wal_generation(self) -> bytes | None:
        """The WAL header's checkpoint sequence number and first salt, which change whenever the WAL
        restarts (sqlite.org/fileformat2.html#walformat); None while there is no WAL."""
        try:
            with self._wal.open("rb") as wal:
                header = wal.read(20)
        except OSError:
            return None
        return header[12:20] if len(header) == 20 else None

    def _passive(self) -> None:
        with self._using:
            if self._connection is None:
                # Autocommit, no busy wait: PASSIVE never waits, and another process's checkpointer running
                # at the same moment just means this one has nothing to do.
                self._connection = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
            self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        with self._using:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

"""The unit of work: commit on success, roll back on any error, close exactly once, even when cancelled.

A task cancelled in the middle of a write must still roll back before the write slot is released,
otherwise the next writer meets a half-done transaction. So the clean-up steps run to completion
whatever happens to the task that asked for them, and the cancellation is delivered afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from dbfoundation.driver_errors import translate

__all__ = ["new_session", "raise_translated", "run_to_completion", "transaction_scope"]


async def run_to_completion(step: Callable[[], Awaitable[Any]]) -> None:
    """Await `step()` to its end even if the calling task is cancelled meanwhile, then re-raise that."""
    task = asyncio.ensure_future(step())
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()


def new_session(bind: AsyncConnection) -> AsyncSession:
    """A session on one connection that owns its transaction: session.commit() commits it.

    expire_on_commit=False because async code must not lazy-load attributes after the commit.
    """
    return AsyncSession(bind=bind, expire_on_commit=False, join_transaction_mode="control_fully")


@contextlib.asynccontextmanager
async def transaction_scope(
    connection: AsyncConnection, *, where: str, commit: bool = True
) -> AsyncIterator[AsyncSession]:
    """Yield a session on `connection`; commit at the end (or, with `commit=False`, roll back: the
    cheaper end for reads), and roll back on any error.

    Driver errors users must act on are raised as dbfoundation errors, the original kept as __cause__.
    """
    session = new_session(connection)
    try:
        yield session
        if commit:
            await session.commit()
        elif session.new or session.dirty or session.deleted:
            await session.flush()  # a read session given objects to write must say no, not drop them
    except BaseException as exc:
        await run_to_completion(_rollback_quietly(session))
        raise_translated(exc, where=where)
    finally:
        await run_to_completion(session.close)


def raise_translated(exc: BaseException, *, where: str) -> NoReturn:
    """Re-raise `exc` from an except block as the dbfoundation error users act on, if there is one."""
    typed = translate(exc, where=where) if isinstance(exc, Exception) else None
    if typed is not None:
        raise typed from exc
    raise exc


def _rollback_quietly(session: AsyncSession) -> Callable[[], Awaitable[None]]:
    async def rollback() -> None:
        # A failed rollback (connection already gone) must not hide the error that caused it; the
        # pool discards such a connection on return.
        with contextlib.suppress(Exception):
            await session.rollback()

    return rollback

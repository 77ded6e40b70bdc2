"""The unit of work: commit on success, roll back on any error, close exactly once, even when cancelled.

A task cancelled in the middle of a write must still roll back before the write slot is released,
otherwise the next writer meets a half-done transaction. So the clean-up steps run to completion
whatever happens to the task that asked for them, and the cancellation is delivered afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from dbfoundation.driver_errors import translate

__all__ = ["new_session", "raise_translated", "run_to_completion"]


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


def raise_translated(exc: BaseException, *, where: str) -> NoReturn:
    """Re-raise `exc` from an except block as the dbfoundation error users act on, if there is one."""
    typed = translate(exc, where=where) if isinstance(exc, Exception) else None
    if typed is not None:
        raise typed from exc
    raise exc

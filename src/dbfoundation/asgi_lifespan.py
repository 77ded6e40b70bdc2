"""Run an ASGI app's lifespan in-process, as a server would: for test clients (httpx.ASGITransport runs none)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

__all__ = ["run_lifespan", "with_state"]


def with_state(app: Any, state: dict[str, Any]) -> Callable[..., Awaitable[None]]:
    """Give each request a copy of the lifespan state, as ASGI servers do (ASGITransport does not)."""

    async def call(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(state)}
        await app(scope, receive, send)

    return call


@contextlib.asynccontextmanager
async def run_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    """Run the app's ASGI lifespan (startup before, shutdown after); yield the state it set."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put), name="dbf-lifespan")
    try:
        await inbox.put({"type": "lifespan.startup"})
        if await _answer(outbox, task, "startup"):
            yield state
            await inbox.put({"type": "lifespan.shutdown"})
            await _answer(outbox, task, "shutdown")
            await task
        else:
            yield state  # an app that raises on a lifespan scope has none (ASGI spec): serve without it
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _answer(outbox: asyncio.Queue[dict[str, Any]], task: asyncio.Task[Any], phase: str) -> bool:
    """Wait for the app's reply to a lifespan event: True when it completed, False when the app has no
    lifespan; raise the app's own error when it reports a failure."""
    getter = asyncio.ensure_future(outbox.get())
    await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    if not getter.done():
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getter
        error = task.exception()
        if phase == "startup" and error is not None:
            return False
        raise RuntimeError(f"the app ended its lifespan during {phase} without answering") from error
    message = getter.result()
    if not message["type"].endswith(".failed"):
        return True
    # Starlette reports the failure, then re-raises the original error: prefer that one.
    await asyncio.wait({task}, timeout=5)
    error = task.exception() if task.done() else None
    if error is not None:
        raise error
    raise RuntimeError(f"the app's lifespan {phase} failed: {message.get('message', '')}")

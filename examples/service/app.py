"""The reference service: signals (webhook ingest with dedup), channels, metadata and interviews.

Built only on dbfoundation's public API. `create_app()` reads DATABASE_URL (default: embedded SQLite at
./data/app.db), applies the Alembic migrations and the plain-SQL ones at start, and serves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import insert, select

from dbfoundation import Database, DatabaseSettings, DuplicateKeyError
from dbfoundation.fastapi import (
    AppDatabase,
    ReadSession,
    WriteSession,
    health_router,
    install_exception_handlers,
    lifespan,
)
from dbfoundation.migrations import sql_connection
from dbfoundation.migrations.sql_runner import upgrade as apply_sql_migrations
from dbfoundation.types import utc_now
from examples.service import interviews
from examples.service.models import Channel, ChannelMessage, Device, Signal, UserPreference, Webhook

HERE = Path(__file__).resolve().parent

# -- signals ---------------------------------------------------------------------------------------------

signals = APIRouter(prefix="/signals", tags=["signals"])


def signal_key(body: dict[str, Any]) -> str:
    """The dedup key: the sender's own `signal_id`, else a hash of the canonical body."""
    given = body.get("signal_id")
    if isinstance(given, str) and given:
        return given[:64]
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@signals.post("", status_code=201)
async def ingest_signal(request: Request, response: Response, db: AppDatabase) -> dict[str, Any]:
    """Store a webhook body once. A retried delivery is answered 200 as a duplicate, never a second row."""
    body = await request.json()
    if not isinstance(body, dict):
        raise HTTPException(422, "a signal is a JSON object")
    key = signal_key(body)
    try:
        # Group commit: concurrent deliveries share one transaction; each returns after the COMMIT.
        await db.submit(insert(Signal), {"signal_id": key, "payload": body, "received_at": utc_now()})
    except DuplicateKeyError:
        response.status_code = 200
        return {"signal_id": key, "duplicate": True}
    return {"signal_id": key, "duplicate": False}


class SignalOut(BaseModel):
    signal_id: str
    payload: dict[str, Any]
    received_at: str
    processed: bool


def _signal_out(signal: Signal) -> SignalOut:
    return SignalOut(
        signal_id=signal.signal_id,
        payload=signal.payload,
        received_at=signal.received_at.isoformat(),
        processed=signal.processed,
    )


@signals.get("")
async def list_signals(session: ReadSession, processed: bool = False, limit: int = 100) -> list[SignalOut]:
    rows = await session.scalars(
        select(Signal).where(Signal.processed == processed).order_by(Signal.received_at, Signal.id).limit(limit)
    )
    return [_signal_out(s) for s in rows]


@signals.post("/{signal_id}/processed")
async def mark_processed(signal_id: str, session: WriteSession) -> SignalOut:
    signal = await session.scalar(select(Signal).where(Signal.signal_id == signal_id))
    if signal is None:
        raise HTTPException(404, f"signal {signal_id} does not exist")
    signal.processed = True
    return _signal_out(signal)


# -- channels --------------------------------------------------------------------------------------------

channels = APIRouter(prefix="/channels", tags=["channels"])


class ChannelIn(BaseModel):
    channel_id: str = Field(min_length=1, max_length=100)
    channel_name: str = Field(min_length=1, max_length=200)


class ChannelPatch(BaseModel):
    channel_name: str | None = None
    is_active: bool | None = None


class ChannelOut(BaseModel):
    id: str
    channel_id: str
    channel_name: str
    is_active: bool
    created_at: str
    updated_at: str


class MessageIn(BaseModel):
    body: str = Field(min_length=1)


def _channel_out(channel: Channel) -> ChannelOut:
    return ChannelOut(
        id=str(channel.id),
        channel_id=channel.channel_id,
        channel_name=channel.channel_name,
        is_active=channel.is_active,
        created_at=channel.created_at.isoformat(),
        updated_at=channel.updated_at.isoformat(),
    )


async def _channel(session: Any, channel_id: str) -> Channel:
    channel = await session.scalar(select(Channel).where(Channel.channel_id == channel_id))
    if channel is None:
        raise HTTPException(404, f"channel {channel_id} does not exist")
    return channel  # type: ignore[no-any-return]


@channels.post("", status_code=201)
async def create_channel(body: ChannelIn, session: WriteSession) -> ChannelOut:
    """A second channel with the same channel_id is a 409 (the unique constraint, via the exception handler)."""
    channel = Channel(channel_id=body.channel_id, channel_name=body.channel_name)
    session.add(channel)
    await session.flush()
    return _channel_out(channel)


@channels.get("")
async def list_channels(session: ReadSession, active: bool | None = None) -> list[ChannelOut]:
    query = select(Channel).order_by(Channel.channel_id)
    if active is not None:
        query = query.where(Channel.is_active == active)
    return [_channel_out(c) for c in await session.scalars(query)]


@channels.get("/{channel_id}")
async def get_channel(channel_id: str, session: ReadSession) -> ChannelOut:
    return _channel_out(await _channel(session, channel_id))


@channels.patch("/{channel_id}")
async def update_channel(channel_id: str, body: ChannelPatch, session: WriteSession) -> ChannelOut:
    channel = await _channel(session, channel_id)
    if body.channel_name is not None:
        channel.channel_name = body.channel_name
    if body.is_active is not None:
        channel.is_active = body.is_active
    await session.flush()
    return _channel_out(channel)


@channels.post("/{channel_id}/messages", status_code=201)
async def post_message(channel_id: str, body: MessageIn, session: WriteSession) -> dict[str, Any]:
    channel = await _channel(session, channel_id)
    message = ChannelMessage(channel_uuid=channel.id, body=body.body)
    session.add(message)
    await session.flush()
    return {"id": message.id, "channel_id": channel_id, "body": message.body}


@channels.get("/{channel_id}/messages")
async def list_messages(channel_id: str, session: ReadSession) -> list[dict[str, Any]]:
    """Only this channel's messages: the query joins on channel_id, so no other channel's rows can leak."""
    rows = await session.execute(
        select(ChannelMessage.id, ChannelMessage.body, ChannelMessage.created_at)
        .join(Channel, Channel.id == ChannelMessage.channel_uuid)
        .where(Channel.channel_id == channel_id)
        .order_by(ChannelMessage.id)
    )
    return [{"id": r.id, "body": r.body, "created_at": r.created_at.isoformat()} for r in rows]


# -- metadata: devices, webhooks, user preferences ---------------------------------------------------------

metadata = APIRouter(tags=["metadata"])


class DeviceIn(BaseModel):
    name: str
    kind: str


class WebhookIn(BaseModel):
    url: str = Field(pattern=r"^https?://")
    event: str


class PreferenceIn(BaseModel):
    value: dict[str, Any]


@metadata.put("/devices/{device_id}")
async def put_device(device_id: str, body: DeviceIn, session: WriteSession) -> dict[str, Any]:
    device = await session.scalar(select(Device).where(Device.device_id == device_id))
    if device is None:
        device = Device(device_id=device_id, name=body.name, kind=body.kind)
        session.add(device)
    else:
        device.name, device.kind = body.name, body.kind
    await session.flush()
    return {"device_id": device.device_id, "name": device.name, "kind": device.kind}


@metadata.post("/devices/{device_id}/seen")
async def device_seen(device_id: str, session: WriteSession) -> dict[str, Any]:
    device = await session.scalar(select(Device).where(Device.device_id == device_id))
    if device is None:
        raise HTTPException(404, f"device {device_id} does not exist")
    device.last_seen_at = utc_now()
    return {"device_id": device_id, "last_seen_at": device.last_seen_at.isoformat()}


@metadata.get("/devices")
async def list_devices(session: ReadSession) -> list[dict[str, Any]]:
    rows = await session.scalars(select(Device).order_by(Device.device_id))
    return [
        {
            "device_id": d.device_id,
            "name": d.name,
            "kind": d.kind,
            "last_seen_at": d.last_seen_at.isoformat() if d.last_seen_at else None,
        }
        for d in rows
    ]


@metadata.post("/webhooks", status_code=201)
async def create_webhook(body: WebhookIn, session: WriteSession) -> dict[str, Any]:
    webhook = Webhook(url=body.url, event=body.event)
    session.add(webhook)
    await session.flush()
    return {"id": webhook.id, "url": webhook.url, "event": webhook.event}


@metadata.get("/webhooks")
async def list_webhooks(session: ReadSession, event: str | None = None) -> list[dict[str, Any]]:
    query = select(Webhook).where(Webhook.is_active.is_(True)).order_by(Webhook.id)
    if event is not None:
        query = query.where(Webhook.event == event)
    return [{"id": w.id, "url": w.url, "event": w.event} for w in await session.scalars(query)]


@metadata.delete("/webhooks/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: int, session: WriteSession) -> None:
    webhook = await session.get(Webhook, webhook_id)
    if webhook is None:
        raise HTTPException(404, f"webhook {webhook_id} does not exist")
    await session.delete(webhook)


@metadata.put("/users/{user_id}/preferences/{key}")
async def put_preference(user_id: str, key: str, body: PreferenceIn, session: WriteSession) -> dict[str, Any]:
    preference = await session.scalar(
        select(UserPreference).where(UserPreference.user_id == user_id, UserPreference.key == key)
    )
    if preference is None:
        session.add(UserPreference(user_id=user_id, key=key, value=body.value))
    else:
        preference.value = body.value
    return {"user_id": user_id, "key": key, "value": body.value}


@metadata.get("/users/{user_id}/preferences")
async def list_preferences(user_id: str, session: ReadSession) -> dict[str, Any]:
    rows = await session.scalars(select(UserPreference).where(UserPreference.user_id == user_id))
    return {p.key: p.value for p in rows}


# -- the app ---------------------------------------------------------------------------------------------


def service_settings(**overrides: Any) -> DatabaseSettings:
    """DATABASE_* from the environment, with this service's own migration folders."""
    return DatabaseSettings(
        **{"migrations_path": str(HERE / "migrations"), "sql_migrations_path": str(HERE / "sql"), **overrides}
    )


def create_app(db: Database | None = None) -> FastAPI:
    """The app, on `db` or a Database from the environment; migrations run at start (under the lock)."""
    database = db if db is not None else Database(service_settings())

    @contextlib.asynccontextmanager
    async def plain_sql_migrations(app: FastAPI) -> AsyncIterator[None]:
        async with sql_connection(database.settings) as connection:
            await apply_sql_migrations(
                connection,
                database.settings.sql_migrations_path,
                lock_timeout_s=database.settings.migration_lock_timeout,
            )
        yield

    app = FastAPI(
        title="dbfoundation reference service",
        lifespan=lifespan(database, migrate=True, app_lifespan=plain_sql_migrations),
    )
    install_exception_handlers(app)
    app.include_router(health_router())
    app.include_router(signals)
    app.include_router(channels)
    app.include_router(metadata)
    app.include_router(interviews.router)
    app.include_router(interviews.concepts)
    return app

"""The service's SQLAlchemy models: signals (webhook ingest), channels, and metadata (devices, webhooks,
preferences). The interviews domain has no models: it is plain SQL (see sql/ and interviews.py)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dbfoundation.models import Base, TimestampMixin, UUIDv7PrimaryKey
from dbfoundation.types import utc_now


class Signal(Base):
    """One webhook delivery, stored once: `signal_id` is the dedup key (the sender's id or a body hash)."""

    __tablename__ = "signals"
    id: Mapped[int] = mapped_column(primary_key=True)
    signal_id: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[dt.datetime] = mapped_column(default=utc_now, index=True)
    processed: Mapped[bool] = mapped_column(default=False)


class Channel(UUIDv7PrimaryKey, TimestampMixin, Base):
    """A bot channel; `channel_id` is the external id every channel-scoped query filters by."""

    __tablename__ = "channels"
    channel_id: Mapped[str] = mapped_column(String(100), unique=True)
    channel_name: Mapped[str] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(default=True)


class ChannelMessage(Base):
    """A message that belongs to exactly one channel."""

    __tablename__ = "channel_messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    channel_uuid: Mapped[uuid.UUID] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"), index=True)
    body: Mapped[str]
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)


class Device(TimestampMixin, Base):
    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(50))
    last_seen_at: Mapped[dt.datetime | None]


class Webhook(TimestampMixin, Base):
    __tablename__ = "webhooks"
    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(500))
    event: Mapped[str] = mapped_column(String(100), index=True)
    is_active: Mapped[bool] = mapped_column(default=True)


class UserPreference(TimestampMixin, Base):
    __tablename__ = "user_preferences"
    __table_args__ = (UniqueConstraint("user_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[str] = mapped_column(String(100), index=True)
    key: Mapped[str] = mapped_column(String(100))
    value: Mapped[dict[str, Any]]

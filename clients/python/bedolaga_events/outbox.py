"""The transactional outbox: the ``event_outbox`` table (SQLAlchemy model and
the SQL migration shipped in ``bedolaga_events/migrations/``) and the insert
that writes an event in the caller's transaction.

Needs SQLAlchemy 2 (``pip install 'bedolaga-events[sqlalchemy]'``)."""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from typing import Any, Dict, Mapping, Optional

from sqlalchemy import BigInteger, DateTime, Identity, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ._envelope import build

#: The NOTIFY channel the migration's trigger signals and the relay listens on.
CHANNEL = "event_outbox"


class OutboxBase(DeclarativeBase):
    """A declarative base of its own, so the model does not join the bot's
    metadata (the table is created by the migration, not ``create_all``)."""


class EventOutbox(OutboxBase):
    """One event waiting for ``outbox-relay``. Write rows with
    :func:`write_outbox` (or ``EventEmitter.emit(..., db=session)``): they
    serialise the envelope as the bot does, which the JSONB type's own
    serialiser would not (datetimes, ``Decimal``)."""

    __tablename__ = "event_outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    envelope: Mapped[Dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


_INSERT = text("INSERT INTO event_outbox (envelope) VALUES (CAST(:envelope AS jsonb))")


async def write_outbox(
    session: Any,
    event_type: str,
    payload: Mapping[str, Any],
    event_id: Optional[str] = None,
) -> str:
    """Adds an event to the outbox inside ``session``'s current transaction
    (an ``AsyncSession`` or ``AsyncConnection``) and returns its id. Nothing
    is committed here: the event exists only if the caller commits."""
    envelope, body = build(event_type, payload, event_id)
    await session.execute(_INSERT, {"envelope": body})
    return str(envelope["id"])


def migration_sql(direction: str = "up") -> str:
    """The SQL of the outbox migration (``up`` or ``down``), e.g. for
    ``op.execute(migration_sql())`` in an Alembic revision."""
    if direction not in ("up", "down"):
        raise ValueError("direction must be 'up' or 'down'")
    return (
        resources.files("bedolaga_events")
        .joinpath(f"migrations/0001_event_outbox.{direction}.sql")
        .read_text(encoding="utf-8")
    )


async def install_outbox(conn: Any) -> None:
    """Runs the (idempotent) migration on an ``AsyncConnection`` or
    ``AsyncSession`` over asyncpg, in its current transaction."""
    if hasattr(conn, "connection") and not hasattr(conn, "get_raw_connection"):
        conn = await conn.connection()  # an AsyncSession
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    # asyncpg runs a script of several statements only without parameters,
    # through the simple query protocol.
    await driver.execute(migration_sql("up"))

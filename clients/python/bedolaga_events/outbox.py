"""The transactional outbox: the ``event_outbox`` table (SQLAlchemy model and
the SQL migration shipped in ``bedolaga_events/migrations/``) and the insert
that writes an event in the caller's transaction.

The ``envelope`` column is ``json``, not ``jsonb``: PostgreSQL keeps json
as the text it was given, so ``outbox-relay`` (which publishes
``envelope::text``) sends exactly the bytes Python serialised, the
payload's key order included.

Needs SQLAlchemy 2 (``pip install 'bedolaga-events[sqlalchemy]'``)."""

from __future__ import annotations

import asyncio
import weakref
from datetime import datetime
from importlib import resources
from typing import Any, Dict, Mapping, Optional

from sqlalchemy import BigInteger, DateTime, Identity, func, text
from sqlalchemy.dialects.postgresql import JSON
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
    serialise the envelope as the bot does, which the JSON type's own
    serialiser would not (datetimes, ``Decimal``, Cyrillic unescaped).
    Reading rows through the model parses the envelope into a dict."""

    __tablename__ = "event_outbox"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    envelope: Mapped[Dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


# json, not jsonb: the text is stored as it is (see the module docstring).
_INSERT = text("INSERT INTO event_outbox (envelope) VALUES (CAST(:envelope AS json))")


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


# Whether the current transaction has written anything: PostgreSQL assigns
# a transaction id at the first write (or row lock), not before.
# pg_current_xact_id_if_assigned() is PostgreSQL 13+.
_HAS_XID = text("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")

#: ``store`` joined the caller's transaction.
JOINED = "joined"
#: ``store`` wrote and committed in a transaction of its own.
OWN_TRANSACTION = "own"


def _is_session(db: Any) -> bool:
    return hasattr(db, "sync_session")  # AsyncSession (and subclasses)


async def transaction_has_written(db: Any) -> bool:
    """True when ``db`` (an ``AsyncSession`` or ``AsyncConnection``) holds
    changes that are not committed yet: pending ORM changes
    (``db.new``/``dirty``/``deleted``), or an open transaction to which
    PostgreSQL has assigned a transaction id (it has written or locked
    rows). A transaction that only read (e.g. ``refresh`` after ``commit``)
    is not. Starts no transaction and flushes nothing."""
    if _is_session(db) and (db.new or db.dirty or db.deleted):
        return True
    if not db.in_transaction():
        return False
    return bool((await db.execute(_HAS_XID)).scalar())


def engine_of(db: Any) -> Any:
    """The ``AsyncEngine`` behind an ``AsyncSession`` or ``AsyncConnection``."""
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    if isinstance(db, AsyncConnection):
        return db.engine
    bind = db.bind if _is_session(db) else None
    if bind is None:
        bind = db.get_bind()  # the session's sync Engine or Connection
    if isinstance(bind, AsyncEngine):
        return bind
    if isinstance(bind, AsyncConnection):
        return bind.engine
    if isinstance(bind, Connection):
        bind = bind.engine
    if isinstance(bind, Engine):
        return AsyncEngine._retrieve_proxy_for_target(bind)
    raise TypeError(f"cannot find the engine of {db!r}")


#: At most this many after-commit writes of one engine run at once (each
#: holds a connection of the side pool for one autocommitted INSERT).
SIDE_WRITES = 8


class _Side:
    """The side engine of one of the bot's engines, and its write limit."""

    __slots__ = ("engine", "limit", "loop", "__weakref__")

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.limit: Optional[asyncio.Semaphore] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None

    def semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self.limit is None or self.loop is not loop:
            self.limit, self.loop = asyncio.Semaphore(SIDE_WRITES), loop
        return self.limit


_sides: "weakref.WeakKeyDictionary[Any, _Side]" = weakref.WeakKeyDictionary()


def _side(engine: Any) -> _Side:
    """The engine after-commit writes use for ``engine``: the same URL,
    connect arguments and dialect (``pool.recreate()``), but a pool of its
    own. Taking the second connection from the bot's own pool would
    deadlock once every pooled connection belongs to a session that is
    waiting in ``emit`` for one more (each holds its read transaction after
    ``refresh``). Disposed with the bot's engine."""
    sync = engine.sync_engine
    side = _sides.get(sync)
    if side is None:
        from sqlalchemy import event
        from sqlalchemy.ext.asyncio import create_async_engine

        # AUTOCOMMIT: the INSERT is its own transaction, committed when it
        # returns: one round trip instead of BEGIN, INSERT and COMMIT.
        side_engine = create_async_engine(
            sync.url, pool=sync.pool.recreate(), isolation_level="AUTOCOMMIT"
        )
        side = _Side(side_engine)
        _sides[sync] = side

        def disposed(_engine: Any, side_sync: Any = side_engine.sync_engine) -> None:
            # Runs inside AsyncEngine.dispose()'s greenlet: the async pool
            # can close its connections from here.
            side_sync.dispose()

        event.listen(sync, "engine_disposed", disposed)
    return side


async def store(db: Any, body: str) -> str:
    """Writes a serialised envelope to the outbox for ``db`` (an
    ``AsyncSession`` or ``AsyncConnection``); returns :data:`JOINED` or
    :data:`OWN_TRANSACTION`.

    - When ``db``'s transaction has written (:func:`transaction_has_written`)
      the row joins it: it is committed or rolled back with the caller's
      changes.
    - Otherwise (no transaction, or one that only read, as after
      ``commit()`` + ``refresh()``) the row is inserted and committed on
      another connection of the same engine before this returns, so what
      the caller does next with ``db`` (commit, rollback, close) cannot
      lose it. ``db`` itself is not touched: no transaction is begun on it.
      The connection comes from a side pool of the same engine
      configuration (see :func:`_side`), at most :data:`SIDE_WRITES` at a
      time per engine.
    """
    if await transaction_has_written(db):
        await db.execute(_INSERT, {"envelope": body})
        return JOINED
    side = _side(engine_of(db))
    async with side.semaphore():
        async with side.engine.connect() as conn:
            await conn.execute(_INSERT, {"envelope": body})
    return OWN_TRANSACTION


def migration_sql(direction: str = "up") -> str:
    """The SQL of the outbox migration (``up`` or ``down``), e.g. for
    ``op.execute(migration_sql())`` in an Alembic revision. ``up`` is
    idempotent and upgrades an outbox an earlier version created (the
    ``jsonb`` column becomes ``json``): run it again after upgrading the
    package, e.g. from a new Alembic revision."""
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
    if _is_session(conn):
        conn = await conn.connection()
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    # asyncpg runs a script of several statements only without parameters,
    # through the simple query protocol.
    await driver.execute(migration_sql("up"))

"""A stand-in for the bot's database layer: two of its tables (our own
minimal DDL), SQLAlchemy models, and CRUD functions that behave as the
bot's do: add a row, ``await db.commit()``, ``await db.refresh(obj)``, then
``await event_emitter.emit(type, payload, db=db)``. Their callers then
commit again, roll back or close the session, as the bot's handlers may."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Dict, Optional

import asyncpg
from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, func
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bedolaga_events import EventEmitter, event_emitter

BOT_DDL = """
CREATE TABLE users (
    id             SERIAL PRIMARY KEY,
    telegram_id    BIGINT UNIQUE,
    username       VARCHAR(255),
    first_name     VARCHAR(255),
    last_name      VARCHAR(255),
    referral_code  VARCHAR(32),
    referred_by_id INTEGER REFERENCES users (id),
    balance_kopeks BIGINT NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE transactions (
    id             SERIAL PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users (id),
    type           VARCHAR(32) NOT NULL,
    amount_kopeks  BIGINT NOT NULL,
    description    TEXT,
    payment_method VARCHAR(50),
    external_id    VARCHAR(255),
    is_completed   BOOLEAN NOT NULL DEFAULT true,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at   TIMESTAMPTZ
);
"""


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    telegram_id: Mapped[Optional[int]] = mapped_column(BigInteger, unique=True)
    username: Mapped[Optional[str]] = mapped_column(String(255))
    first_name: Mapped[Optional[str]] = mapped_column(String(255))
    last_name: Mapped[Optional[str]] = mapped_column(String(255))
    referral_code: Mapped[Optional[str]] = mapped_column(String(32))
    referred_by_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id"))
    balance_kopeks: Mapped[int] = mapped_column(BigInteger, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Transaction(Base):
    __tablename__ = "transactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    type: Mapped[str] = mapped_column(String(32))
    amount_kopeks: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[Optional[str]] = mapped_column(Text)
    payment_method: Mapped[Optional[str]] = mapped_column(String(50))
    external_id: Mapped[Optional[str]] = mapped_column(String(255))
    is_completed: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    completed_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))


async def install_bot_tables(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(BOT_DDL)
    finally:
        await conn.close()


def bot_sessions(sqlalchemy_url: str, **engine_options: Any) -> "tuple[AsyncEngine, async_sessionmaker]":
    """The bot's engine and session factory (``expire_on_commit=False``,
    as the bot configures it)."""
    engine = create_async_engine(sqlalchemy_url, **engine_options)
    return engine, async_sessionmaker(engine, expire_on_commit=False)


def user_payload(user: User) -> Dict[str, Any]:
    return {
        "user_id": user.id,
        "telegram_id": user.telegram_id,
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "referral_code": user.referral_code,
        "referred_by_id": user.referred_by_id,
    }


async def create_user(
    db: Any,
    telegram_id: int,
    first_name: str,
    *,
    username: Optional[str] = None,
    emitter: EventEmitter = event_emitter,
) -> User:
    """Commits the user, refreshes it, then emits ``user.created``."""
    user = User(
        telegram_id=telegram_id,
        username=username,
        first_name=first_name,
        last_name="Петров",
        referral_code=f"ref{telegram_id}",
    )
    db.add(user)
    await db.commit()
    await db.refresh(user)
    await emitter.emit("user.created", user_payload(user), db=db)
    return user


def transaction_payload(t: Transaction) -> Dict[str, Any]:
    return {
        "transaction_id": t.id,
        "user_id": t.user_id,
        "type": t.type,
        "amount_kopeks": abs(t.amount_kopeks),
        "amount_rubles": abs(t.amount_kopeks) / 100,
        "payment_method": t.payment_method,
        "external_id": t.external_id,
        "is_completed": t.is_completed,
        "description": t.description,
    }


async def create_transaction(
    db: Any,
    user_id: int,
    type_: str,
    amount_kopeks: int,
    *,
    description: str = "Пополнение баланса 💰",
    emitter: EventEmitter = event_emitter,
) -> Transaction:
    """Commits the transaction, refreshes it, then emits
    ``payment.completed`` (a deposit) or ``transaction.created``."""
    t = Transaction(
        user_id=user_id,
        type=type_,
        amount_kopeks=amount_kopeks,
        description=description,
        payment_method="yookassa",
        external_id=f"ext-{user_id}-{amount_kopeks}",
    )
    db.add(t)
    await db.commit()
    await db.refresh(t)
    event_type = "payment.completed" if type_ == "deposit" else "transaction.created"
    await emitter.emit(event_type, transaction_payload(t), db=db)
    return t


async def create_oauth_user(db: Any, email: str, *, emitter: EventEmitter = event_emitter) -> User:
    """The one emit site that emits before its commit: flush, emit, and the
    caller commits (or not)."""
    user = User(first_name=email.split("@")[0], referral_code=f"ref-{email}")
    db.add(user)
    await db.flush()
    await emitter.emit(
        "user.created",
        {"user_id": user.id, "email": email, "first_name": user.first_name, "auth_type": "email"},
        db=db,
    )
    return user

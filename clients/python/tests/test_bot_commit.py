"""The bot's emit pattern: emit after its own commit, then the caller
commits again, rolls back or closes the session. Every event whose rows
were committed is published exactly once (through the real outbox-relay);
an emit inside a transaction that wrote and then rolled back publishes
nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Dict, List

import asyncpg
import pytest
from sqlalchemy import func, select, text

from bedolaga_events import event_emitter
from bedolaga_events.outbox import JOINED, OWN_TRANSACTION, store, transaction_has_written
from botlike import (
    User,
    bot_sessions,
    create_oauth_user,
    create_transaction,
    create_user,
    install_bot_tables,
)
from conftest import NATS_URL, RelayProcess, outbox_len, run, sqlalchemy_url, stream_messages, wait_stream_len


@pytest.fixture
def bot_database(database: str) -> str:
    """The bot's database: its (stand-in) tables and the outbox migration."""
    run(install_bot_tables(database))
    return database


async def settle(prefix: str, want: int) -> List[Dict[str, Any]]:
    """The stream once it holds `want` messages and nothing more arrived
    for a while (a duplicate or a leak would show up)."""
    assert await wait_stream_len(NATS_URL, prefix, want, within=20) >= want
    await asyncio.sleep(1.0)
    return await stream_messages(NATS_URL, prefix)


async def users_in(database: str) -> List[int]:
    conn = await asyncpg.connect(database)
    try:
        return [r[0] for r in await conn.fetch("SELECT telegram_id FROM users ORDER BY id")]
    finally:
        await conn.close()


def test_events_emitted_after_the_bots_commit_survive_what_the_caller_does_next(
    bot_database: str, prefix: str, relays
) -> None:
    relays.append(RelayProcess(bot_database, NATS_URL, prefix))

    async def go() -> None:
        engine, Session = bot_sessions(sqlalchemy_url(bot_database))
        # 1. The caller rolls back after the CRUD function committed.
        async with Session() as db:
            u1 = (await create_user(db, 1001, "Иван")).id  # rollback expires the object
            await db.rollback()
        # 2. The caller just closes the session.
        db = Session()
        u2 = (await create_user(db, 1002, "Мария")).id
        await db.close()
        # 3. The caller commits again.
        async with Session() as db:
            u3 = (await create_user(db, 1003, "Пётр")).id
            await db.commit()
        # 4. Two CRUD calls in one session, then the caller writes more and
        #    rolls that back: both committed events stay, the extra row goes.
        async with Session() as db:
            u4 = (await create_user(db, 1004, "Анна")).id
            t4 = (await create_transaction(db, u4, "deposit", 15050)).id
            db.add(User(telegram_id=9999, first_name="никогда"))
            await db.flush()
            await db.rollback()
        # 5. A withdrawal: transaction.created, then the session is left to
        #    the garbage collector after a failed statement.
        async with Session() as db:
            t5 = (await create_transaction(db, u4, "withdrawal", -500, description="Списание")).id
            with pytest.raises(Exception):
                await db.execute(text("SELECT * FROM no_such_table"))
            await db.rollback()

        assert sorted(await users_in(bot_database)) == [1001, 1002, 1003, 1004]
        msgs = await settle(prefix, 6)
        got = [(m["envelope"]["type"], m["envelope"]["payload"]) for m in msgs]
        users = sorted(p["telegram_id"] for t, p in got if t == "user.created")
        assert users == [1001, 1002, 1003, 1004], got
        assert [p["transaction_id"] for t, p in got if t == "payment.completed"] == [t4]
        assert [p["transaction_id"] for t, p in got if t == "transaction.created"] == [t5]
        assert len(msgs) == 6, "each committed event exactly once"
        assert len({m["msg_id"] for m in msgs}) == 6
        # The ids the bot's rows got after commit + refresh are in the payloads.
        assert {p["user_id"] for t, p in got if t == "user.created"} == {u1, u2, u3, u4}
        assert await outbox_len(bot_database) == 0
        await engine.dispose()

    run(go())


def test_the_payload_reaches_nats_as_the_bot_serialised_it(bot_database: str, prefix: str, relays) -> None:
    """json keeps the text: key order (not sorted), spacing and raw UTF-8 are
    what Python wrote, byte for byte."""
    relays.append(RelayProcess(bot_database, NATS_URL, prefix))

    async def go() -> None:
        engine, Session = bot_sessions(sqlalchemy_url(bot_database))
        async with Session() as db:
            u = await create_user(db, 2001, "Юля 🚀", username="zz_top")
            await create_transaction(db, u.id, "deposit", 100)
        msgs = await settle(prefix, 2)
        for m in msgs:
            env = m["envelope"]
            assert m["data"] == json.dumps(env, ensure_ascii=False).encode(), "the bytes Python wrote"
        keys = list(msgs[0]["envelope"]["payload"])
        assert keys == [
            "user_id",
            "telegram_id",
            "username",
            "first_name",
            "last_name",
            "referral_code",
            "referred_by_id",
        ]
        assert keys != sorted(keys)
        assert list(msgs[1]["envelope"]["payload"])[:3] == ["transaction_id", "user_id", "type"]
        assert "Юля 🚀".encode() in msgs[0]["data"]
        await engine.dispose()

    run(go())


def test_an_emit_in_a_transaction_that_wrote_goes_with_it(bot_database: str, prefix: str, relays) -> None:
    relays.append(RelayProcess(bot_database, NATS_URL, prefix))

    async def go() -> None:
        engine, Session = bot_sessions(sqlalchemy_url(bot_database))
        # OAuth sign-up emits before its commit: rolled back, nothing.
        async with Session() as db:
            await create_oauth_user(db, "rolled@back.example")
            await db.rollback()
        # Pending ORM changes, not even flushed: the emit joins them.
        async with Session() as db:
            db.add(User(telegram_id=3002, first_name="pending"))
            await event_emitter.emit("user.created", {"user_id": 0, "telegram_id": 3002}, db=db)
            await db.rollback()
        # A transaction that wrote with plain SQL, then closed without a commit.
        db = Session()
        await db.execute(text("INSERT INTO users (telegram_id) VALUES (3003)"))
        await event_emitter.emit("user.created", {"user_id": 0, "telegram_id": 3003}, db=db)
        await db.close()
        # Committed: published once.
        async with Session() as db:
            u = await create_oauth_user(db, "kept@example.com")
            await db.commit()
        msgs = await settle(prefix, 1)
        assert [m["envelope"]["payload"].get("email") for m in msgs] == ["kept@example.com"]
        assert msgs[0]["envelope"]["payload"]["user_id"] == u.id
        assert await users_in(bot_database) == [None]  # only the OAuth user is left
        await engine.dispose()

    run(go())


def test_the_after_commit_write_is_committed_before_emit_returns_and_leaves_the_session_alone(
    bot_database: str,
) -> None:
    """No relay: the outbox row is visible to another connection as soon as
    emit returns, while the caller's session is still open; the session is
    not begun or committed by emit."""

    async def go() -> None:
        engine, Session = bot_sessions(sqlalchemy_url(bot_database))
        async with Session() as db:
            user = User(telegram_id=4001, first_name="Иван")
            db.add(user)
            await db.commit()
            assert not db.in_transaction()
            await event_emitter.emit("user.created", {"user_id": user.id}, db=db)
            assert not db.in_transaction(), "emit must not autobegin the caller's session"
            assert await outbox_len(bot_database) == 1, "committed before emit returned"
            # After refresh (a transaction that only read).
            await db.refresh(user)
            assert db.in_transaction()
            assert not await transaction_has_written(db)
            await event_emitter.emit("user.created", {"user_id": user.id}, db=db)
            assert await outbox_len(bot_database) == 2
            # The caller's read transaction is still its own: no write in it.
            assert (await db.execute(text("SELECT pg_current_xact_id_if_assigned()"))).scalar() is None
            await db.rollback()
        assert await outbox_len(bot_database) == 2

        # store() tells which way it went.
        async with Session() as db:
            assert await store(db, '{"id":"x1","type":"user.created","timestamp":"t","payload":{}}') == OWN_TRANSACTION
            await db.execute(select(func.count()).select_from(User))
            assert await store(db, '{"id":"x2","type":"user.created","timestamp":"t","payload":{}}') == OWN_TRANSACTION
            await db.execute(text("INSERT INTO users (telegram_id) VALUES (4002)"))
            assert await store(db, '{"id":"x3","type":"user.created","timestamp":"t","payload":{}}') == JOINED
            await db.rollback()
        assert await outbox_len(bot_database) == 4
        await engine.dispose()

    run(go())


def test_an_async_connection_works_as_db_both_ways(bot_database: str, prefix: str, relays) -> None:
    relays.append(RelayProcess(bot_database, NATS_URL, prefix))

    async def go() -> None:
        engine, _ = bot_sessions(sqlalchemy_url(bot_database))
        async with engine.connect() as conn:
            # Wrote and committed, then emit: its own transaction; the
            # rollback afterwards cannot take it.
            await conn.execute(text("INSERT INTO users (telegram_id) VALUES (5001)"))
            await conn.commit()
            await event_emitter.emit("user.created", {"telegram_id": 5001}, db=conn)
            assert not conn.in_transaction()
            await conn.rollback()
            # Wrote, emit joins, rolled back: nothing.
            await conn.execute(text("INSERT INTO users (telegram_id) VALUES (5002)"))
            await event_emitter.emit("user.created", {"telegram_id": 5002}, db=conn)
            await conn.rollback()
            # Wrote, emit joins, committed: once.
            await conn.execute(text("INSERT INTO users (telegram_id) VALUES (5003)"))
            await event_emitter.emit("user.created", {"telegram_id": 5003}, db=conn)
            await conn.commit()
        msgs = await settle(prefix, 2)
        assert sorted(m["envelope"]["payload"]["telegram_id"] for m in msgs) == [5001, 5003]
        assert await users_in(bot_database) == [5001, 5003]
        await engine.dispose()

    run(go())


def test_many_concurrent_bot_requests_each_event_once(bot_database: str, prefix: str, relays) -> None:
    """Concurrent handlers on a small pool: the after-commit write takes a
    second connection of the pool for a moment; nothing is lost or doubled."""
    relays.append(RelayProcess(bot_database, NATS_URL, prefix))

    async def go() -> None:
        engine, Session = bot_sessions(sqlalchemy_url(bot_database), pool_size=5, max_overflow=5)

        async def handler(i: int) -> None:
            async with Session() as db:
                u = await create_user(db, 10_000 + i, f"user {i}")
                await create_transaction(db, u.id, "deposit", 100 + i)
                if i % 3 == 0:
                    await db.rollback()
                elif i % 3 == 1:
                    await db.commit()

        await asyncio.gather(*(handler(i) for i in range(40)))
        msgs = await settle(prefix, 80)
        assert len(msgs) == 80
        assert sorted(
            m["envelope"]["payload"]["telegram_id"] for m in msgs if m["envelope"]["type"] == "user.created"
        ) == [10_000 + i for i in range(40)]
        assert len({m["msg_id"] for m in msgs}) == 80
        await engine.dispose()

    run(go())

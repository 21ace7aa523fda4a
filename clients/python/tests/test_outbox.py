"""The transactional outbox end to end: the emitter writes in the caller's
transaction, outbox-relay publishes what committed."""

from __future__ import annotations

import asyncio
import enum
import json
import time
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Dict, List

import asyncpg
import nats
import nats.js.errors
import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from bedolaga_events import EventEmitter, names
from bedolaga_events.outbox import EventOutbox, write_outbox
from conftest import (
    NATS_URL,
    RelayProcess,
    outbox_len,
    run,
    sqlalchemy_url,
    stream_len,
    stream_messages,
    wait_stream_len,
)


def sessions(database: str):
    engine = create_async_engine(sqlalchemy_url(database))
    return engine, async_sessionmaker(engine, expire_on_commit=False)


async def wait_outbox_empty(database: str, within: float = 15.0) -> int:
    deadline = time.monotonic() + within
    n = -1
    while time.monotonic() < deadline:
        n = await outbox_len(database)
        if n == 0:
            return 0
        await asyncio.sleep(0.05)
    return n


def test_a_rolled_back_transaction_publishes_nothing(database: str, prefix: str, relays) -> None:
    relays.append(RelayProcess(database, NATS_URL, prefix))

    async def go() -> None:
        engine, Session = sessions(database)
        emitter = EventEmitter()
        async with Session() as db:
            # The change the events describe: the transaction has written,
            # so the outbox rows join it.
            await db.execute(text("CREATE TEMP TABLE bot_change (x int)"))
            await db.execute(text("INSERT INTO bot_change VALUES (1)"))
            await emitter.emit("user.created", {"user_id": 1}, db=db)
            await emitter.emit("payment.completed", {"transaction_id": 1}, db=db)
            await db.rollback()
        # A committed marker afterwards: once it is stored, the rolled-back
        # events would have been too.
        async with Session() as db:
            await emitter.emit("ticket.created", {"ticket_id": 99}, db=db)
            await db.commit()
        assert await wait_stream_len(NATS_URL, prefix, 1) == 1
        await asyncio.sleep(0.5)
        msgs = await stream_messages(NATS_URL, prefix)
        assert [m["envelope"]["type"] for m in msgs] == ["ticket.created"]
        assert await outbox_len(database) == 0
        await engine.dispose()

    run(go())


def test_a_committed_transaction_publishes_exactly_once(database: str, prefix: str, relays) -> None:
    relay = RelayProcess(database, NATS_URL, prefix)
    relays.append(relay)

    async def go() -> None:
        engine, Session = sessions(database)
        emitter = EventEmitter()
        ids: List[str] = []
        async with Session() as db:
            async with db.begin():
                for i in range(3):
                    ids.append(await write_outbox(db, "transaction.created", {"transaction_id": i}))
                # Visible inside the transaction through the model.
                rows = (await db.execute(select(EventOutbox).order_by(EventOutbox.id))).scalars().all()
                assert [r.envelope["id"] for r in rows] == ids
            await emitter.emit("user.created", {"user_id": 7}, db=db)
            await db.commit()
        assert await wait_stream_len(NATS_URL, prefix, 4) == 4
        await asyncio.sleep(1.0)
        msgs = await stream_messages(NATS_URL, prefix)
        assert len(msgs) == 4
        assert [m["msg_id"] for m in msgs[:3]] == ids, "id order, envelope id as Nats-Msg-Id"
        assert len({m["msg_id"] for m in msgs}) == 4
        assert await wait_outbox_empty(database) == 0
        m = relay.metrics()
        assert m["outbox_relay_published_total"] == 4
        assert m["outbox_relay_duplicates_total"] == 0
        await engine.dispose()

    run(go())


def test_nats_stopped_during_the_commit_the_event_arrives_after_it_returns(
    database: str, private_nats, relays
) -> None:
    relays.append(RelayProcess(database, private_nats.url, "", RELAY_PUBLISH_TIMEOUT="1s"))

    async def go() -> None:
        engine, Session = sessions(database)
        emitter = EventEmitter()
        async with Session() as db:
            await emitter.emit("payment.completed", {"transaction_id": 1, "amount_kopeks": 100}, db=db)
            await db.commit()
        assert await wait_stream_len(private_nats.url, "", 1) == 1
        private_nats.stop()
        async with Session() as db:
            await emitter.emit(
                "payment.completed",
                {"transaction_id": 2, "amount_kopeks": 15050, "amount_rubles": Decimal("150.50")},
                db=db,
            )
            await db.commit()  # the bot's commit succeeds while NATS is down
        await asyncio.sleep(2.0)
        assert await outbox_len(database) == 1, "kept until JetStream has it"
        await asyncio.get_running_loop().run_in_executor(None, private_nats.start)
        assert await wait_stream_len(private_nats.url, "", 2, within=30) == 2
        assert await wait_outbox_empty(database) == 0
        msgs = await stream_messages(private_nats.url, "")
        assert [m["envelope"]["payload"]["transaction_id"] for m in msgs] == [1, 2]
        assert msgs[1]["envelope"]["payload"]["amount_rubles"] == "150.50"
        await engine.dispose()

    run(go())


async def fill_outbox(database: str, n: int) -> List[str]:
    """n committed events in chunks of 1000; their ids in order."""
    ids: List[str] = []
    conn = await asyncpg.connect(database)
    try:
        from bedolaga_events._envelope import build

        for start in range(0, n, 1000):
            rows = []
            for i in range(start, min(n, start + 1000)):
                env, body = build("user.created", {"user_id": i, "first_name": "Пётр 🚀"})
                ids.append(env["id"])
                rows.append((body,))
            await conn.executemany("INSERT INTO event_outbox (envelope) VALUES ($1::json)", rows)
    finally:
        await conn.close()
    return ids


def test_a_relay_killed_mid_batch_loses_nothing_and_the_stream_keeps_no_duplicate(
    database: str, prefix: str, relays
) -> None:
    n = 20000

    async def go() -> None:
        ids = await fill_outbox(database, n)
        # One batch of 5,000: the kill lands while JetStream has stored part
        # of it and the transaction that deletes it is still open.
        first = RelayProcess(database, NATS_URL, prefix, RELAY_BATCH_SIZE="5000")
        relays.append(first)
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if (await js.stream_info(names(prefix)[1])).state.messages >= 200:
                    break
            except nats.js.errors.NotFoundError:
                pass
            await asyncio.sleep(0.001)
        first.kill()  # SIGKILL: no shutdown, the batch in flight
        await nc.close()
        await asyncio.sleep(0.5)  # what the server had already received is stored
        stored = await stream_len(NATS_URL, prefix)
        left = await outbox_len(database)
        assert stored > 0
        assert left == n, (
            f"the killed batch must be rolled back, every row still there ({left} left, {stored} stored)"
        )
        second = RelayProcess(database, NATS_URL, prefix)
        relays.append(second)
        assert await wait_outbox_empty(database, within=60) == 0
        await asyncio.sleep(0.5)
        msgs = await stream_messages(NATS_URL, prefix)
        got = [m["msg_id"] for m in msgs]
        assert len(got) == n, f"{len(got)} stored for {n} events"
        assert sorted(got) == sorted(ids)
        # What the killed relay had stored went out again and JetStream
        # dropped it as a duplicate (same Nats-Msg-Id).
        m = second.metrics()
        assert m["outbox_relay_duplicates_total"] == stored
        assert m["outbox_relay_published_total"] == n

    run(go())


def test_two_relays_never_publish_a_row_twice(database: str, prefix: str, relays) -> None:
    n = 6000
    a = RelayProcess(database, NATS_URL, prefix, RELAY_BATCH_SIZE="100")
    b = RelayProcess(database, NATS_URL, prefix, RELAY_BATCH_SIZE="100")
    relays.extend([a, b])

    async def go() -> None:
        ids = await fill_outbox(database, n)
        assert await wait_outbox_empty(database, within=60) == 0
        await asyncio.sleep(0.5)
        msgs = await stream_messages(NATS_URL, prefix)
        assert len(msgs) == n
        assert sorted(m["msg_id"] for m in msgs) == sorted(ids)
        ma, mb = a.metrics(), b.metrics()
        assert ma["outbox_relay_published_total"] + mb["outbox_relay_published_total"] == n
        assert ma["outbox_relay_duplicates_total"] == 0
        assert mb["outbox_relay_duplicates_total"] == 0
        assert ma["outbox_relay_published_total"] > 0 and mb["outbox_relay_published_total"] > 0, (
            "both relays took part"
        )

    run(go())


class Status(enum.Enum):
    OPEN = "open"


def bot_payloads() -> List[Dict[str, Any]]:
    """The shapes the bot's CRUD functions emit."""
    return [
        {
            "user_id": 1,
            "telegram_id": 123456789012,
            "username": None,
            "first_name": "Иван",
            "last_name": "Петров 👨‍💻",
            "referral_code": "ref_Юля",
            "referred_by_id": None,
        },
        {
            "transaction_id": 10,
            "user_id": 1,
            "type": "deposit",
            "amount_kopeks": 15050,
            "amount_rubles": Decimal("150.50"),
            "payment_method": "yookassa",
            "external_id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "is_completed": True,
            "description": "Пополнение баланса 💰",
            "created_at": datetime(2024, 1, 15, 10, 30, 0),
            "completed_at": datetime(2024, 1, 15, 10, 30, 5, 123456, tzinfo=timezone.utc),
        },
        {
            "ticket_id": 3,
            "user_id": 1,
            "old_status": Status.OPEN,
            "new_status": "closed",
            "closed_at": date(2024, 1, 16),
            "tags": ["срочно", "🔥"],
            "meta": {"nested": {"ratio": 0.1, "big": 2**53 + 1}},
        },
    ]


def expected(payload: Dict[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(payload, default=str, ensure_ascii=False))


def test_the_emitter_takes_the_bots_call_shapes(database: str, prefix: str, relays) -> None:
    relays.append(RelayProcess(database, NATS_URL, prefix))

    async def go() -> None:
        engine, Session = sessions(database)
        emitter = EventEmitter()
        seen: List[Dict[str, Any]] = []
        everything: List[str] = []

        async def on_payment(event: Dict[str, Any]) -> None:
            seen.append(event)

        emitter.on("payment.completed", on_payment)
        emitter.on("*", lambda event: everything.append(event["type"]))
        types = ["user.created", "payment.completed", "ticket.status_changed"]
        payloads = bot_payloads()
        async with Session() as db:
            for t, p in zip(types, payloads):
                await emitter.emit(t, p, db)  # positional db, as the bot calls it
            await db.commit()
        emitter.off("payment.completed", on_payment)
        # Without db: published directly.
        await emitter.connect(NATS_URL, prefix)
        try:
            await emitter.emit("payment.completed", payloads[1])
        finally:
            await emitter.close()
        assert len(seen) == 1 and seen[0]["payload"]["amount_rubles"] == Decimal("150.50")
        assert everything == types + ["payment.completed"]

        assert await wait_stream_len(NATS_URL, prefix, 4) == 4
        msgs = await stream_messages(NATS_URL, prefix)
        by_type: Dict[str, List[Dict[str, Any]]] = {}
        for m in msgs:
            by_type.setdefault(m["envelope"]["type"], []).append(m)
        for t, p in zip(types, payloads):
            for m in by_type[t]:
                assert m["envelope"]["payload"] == expected(p)
        pay = by_type["payment.completed"][0]["envelope"]["payload"]
        assert pay["amount_rubles"] == "150.50"
        assert pay["created_at"] == "2024-01-15 10:30:00"
        assert pay["external_id"] == "12345678-1234-5678-1234-567812345678"
        assert pay["description"] == "Пополнение баланса 💰"
        for m in msgs:
            assert "\\u04" not in m["data"].decode(), "Cyrillic travels unescaped"
            assert m["msg_id"] == m["envelope"]["id"]
        await engine.dispose()

    run(go())


def test_an_invalid_event_fails_inside_the_callers_transaction(database: str) -> None:

    from bedolaga_events import InvalidEvent

    async def go() -> None:
        engine, Session = sessions(database)
        emitter = EventEmitter()
        async with Session() as db:
            with pytest.raises(InvalidEvent):
                await emitter.emit("user.deleted", {"user_id": 1}, db=db)
            with pytest.raises(InvalidEvent):
                await emitter.emit("user.created", "not a dict", db=db)  # type: ignore[arg-type]
            await db.commit()
        assert await outbox_len(database) == 0
        await engine.dispose()

    run(go())


# The outbox as the first version of the migration created it.
JSONB_OUTBOX = r"""
DROP TABLE event_outbox;
CREATE TABLE event_outbox (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    envelope   JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT event_outbox_id_ok CHECK (coalesce(
        jsonb_typeof(envelope -> 'id') = 'string'
        AND length(envelope ->> 'id') BETWEEN 1 AND 64, false)),
    CONSTRAINT event_outbox_type_ok CHECK (coalesce(
        (envelope ->> 'type') ~ '^[a-z0-9_]+(\.[a-z0-9_]+)+$', false)),
    CONSTRAINT event_outbox_timestamp_ok CHECK (coalesce(jsonb_typeof(envelope -> 'timestamp') = 'string', false)),
    CONSTRAINT event_outbox_payload_ok CHECK (coalesce(jsonb_typeof(envelope -> 'payload') = 'object', false))
);
CREATE TRIGGER event_outbox_notify AFTER INSERT ON event_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION event_outbox_notify();
"""


def test_install_outbox_upgrades_a_jsonb_outbox_to_json_and_keeps_its_rows(database: str) -> None:
    from bedolaga_events.outbox import install_outbox

    async def column_type(conn: asyncpg.Connection) -> str:
        return str(
            await conn.fetchval(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'event_outbox'::regclass AND attname = 'envelope'"
            )
        )

    async def go() -> None:
        conn = await asyncpg.connect(database)
        try:
            assert await column_type(conn) == "json", "a new install is json"
            await conn.execute(JSONB_OUTBOX)
            assert await column_type(conn) == "jsonb"
            await conn.execute(
                "INSERT INTO event_outbox (envelope) VALUES ($1::jsonb)",
                '{"id": "old", "type": "user.created", "timestamp": "t", "payload": {"b": 1, "a": 2}}',
            )
        finally:
            await conn.close()
        engine, Session = sessions(database)
        async with engine.begin() as c:  # an AsyncConnection
            await install_outbox(c)
        async with Session() as s:  # an AsyncSession, again: idempotent
            await install_outbox(s)
            await s.commit()
        conn = await asyncpg.connect(database)
        try:
            assert await column_type(conn) == "json"
            assert await conn.fetchval("SELECT envelope ->> 'id' FROM event_outbox") == "old"
            checks = await conn.fetch(
                "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
                "WHERE conrelid = 'event_outbox'::regclass AND contype = 'c' ORDER BY conname"
            )
            assert [r["conname"] for r in checks] == [
                "event_outbox_id_ok",
                "event_outbox_payload_ok",
                "event_outbox_timestamp_ok",
                "event_outbox_type_ok",
            ]
            assert all("jsonb" not in r["def"] for r in checks)
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(
                    "INSERT INTO event_outbox (envelope) VALUES ($1::json)",
                    '{"id": "x", "type": "user.created", "timestamp": "t", "payload": []}',
                )
        finally:
            await conn.close()
        # The emitter's row is stored as the text Python wrote.
        async with Session() as db:
            await EventEmitter().emit("user.created", {"z": 1, "a": "Иван", "m": None}, db=db)
        conn = await asyncpg.connect(database)
        try:
            text_ = await conn.fetchval("SELECT envelope::text FROM event_outbox ORDER BY id DESC LIMIT 1")
        finally:
            await conn.close()
        assert text_.endswith('"payload": {"z": 1, "a": "Иван", "m": null}}')
        assert json.dumps(json.loads(text_), ensure_ascii=False) == text_
        await engine.dispose()

    run(go())

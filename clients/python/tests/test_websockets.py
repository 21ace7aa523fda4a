"""The bot's own `/ws` route on our emitter: sockets registered with
`register_websocket` get the events of the NATS event stream (from any
publisher or process) in the bot's format, until `unregister_websocket`.
The socket is a stand-in with the Starlette WebSocket methods the route
uses; NATS is the real server."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional

import nats
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from bedolaga_events import EventEmitter, Publisher, names
from bedolaga_events._envelope import bot_timestamp
from conftest import NATS_URL, RelayProcess, run, sqlalchemy_url, stream_messages

BOT_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?\+00:00$")
PACKAGE = Path(__file__).resolve().parents[1]


class Disconnect(Exception):
    """What Starlette raises from receive_* once the client is gone."""


class FakeSocket:
    """The part of Starlette's WebSocket the bot's route and our emitter
    use. `mode`: "ok", "fail" (send_text raises) or "hang" (never returns)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.texts: List[str] = []
        self.json_sent: List[Dict[str, Any]] = []
        self.incoming: "asyncio.Queue[Optional[str]]" = asyncio.Queue()
        self.accepted = False
        self.send_calls = 0

    async def accept(self) -> None:
        self.accepted = True

    async def send_text(self, data: str) -> None:
        self.send_calls += 1
        if self.mode == "fail":
            raise RuntimeError("Cannot call send once a close message has been sent")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        self.texts.append(data)

    async def send_json(self, data: Any) -> None:
        self.json_sent.append(data)

    async def receive_text(self) -> str:
        item = await self.incoming.get()
        if item is None:
            raise Disconnect()
        return item

    def events(self) -> List[Dict[str, Any]]:
        return [json.loads(t) for t in self.texts]


async def bot_ws_route(websocket: FakeSocket, emitter: EventEmitter) -> None:
    """The shape of the bot's `/ws` handler after authentication: accept,
    register, greet, answer pings until the client leaves, unregister."""
    await websocket.accept()
    emitter.register_websocket(websocket)
    try:
        await websocket.send_json(
            {"type": "connection", "status": "connected", "message": "WebSocket connection established"}
        )
        while True:
            try:
                message = json.loads(await websocket.receive_text())
            except json.JSONDecodeError:
                continue
            except Disconnect:
                break
            if message.get("type") == "ping":
                await websocket.send_json({"type": "pong"})
    finally:
        emitter.unregister_websocket(websocket)


async def eventually(cond: Callable[[], bool], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


def expected_text(envelope: Dict[str, Any]) -> str:
    return json.dumps(
        {
            "type": envelope["type"],
            "payload": envelope["payload"],
            "timestamp": bot_timestamp(envelope["timestamp"]),
        },
        default=str,
        ensure_ascii=False,
    )


async def with_emitter(prefix: str, body: Callable[[EventEmitter], Awaitable[None]], **kw: Any) -> None:
    emitter = EventEmitter(**kw)
    await emitter.connect(NATS_URL, prefix)
    try:
        await body(emitter)
    finally:
        await emitter.close()


def publish_from_another_process(prefix: str, payload: Dict[str, Any]) -> None:
    script = (
        "import asyncio, json, sys\n"
        "from bedolaga_events import Publisher\n"
        "async def main():\n"
        "    p = await Publisher().connect(sys.argv[1], prefix=sys.argv[2])\n"
        "    await p.publish('ticket.created', json.loads(sys.argv[3]))\n"
        "    await p.close()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, NATS_URL, prefix, json.dumps(payload, ensure_ascii=False)],
        cwd=PACKAGE,
        check=True,
        timeout=30,
    )


def test_the_bots_ws_route_gets_stream_events_in_the_bots_format(prefix: str) -> None:
    async def body(emitter: EventEmitter) -> None:
        ws = FakeSocket()
        route = asyncio.create_task(bot_ws_route(ws, emitter))
        assert await eventually(lambda: emitter.websocket_count == 1)
        assert await emitter.wait_websocket_feed()
        assert ws.json_sent == [
            {"type": "connection", "status": "connected", "message": "WebSocket connection established"}
        ]
        ws.incoming.put_nowait('{"type": "ping"}')
        assert await eventually(lambda: ws.json_sent[-1:] == [{"type": "pong"}])

        # Another publisher (its own connection) ...
        other = await Publisher().connect(NATS_URL, prefix=prefix)
        await other.publish(
            "user.created",
            {"user_id": 1, "telegram_id": 77, "username": None, "first_name": "Иван", "last_name": "👨‍💻"},
        )
        await other.close()
        # ... another process ...
        await asyncio.get_running_loop().run_in_executor(
            None, publish_from_another_process, prefix, {"ticket_id": 5, "user_id": 1, "title": "Не работает VPN"}
        )
        # ... and this emitter without db (published directly).
        await emitter.emit("payment.completed", {"transaction_id": 9, "amount_kopeks": 100, "z": 1, "a": 2})

        assert await eventually(lambda: len(ws.texts) == 3), ws.texts
        stored = await stream_messages(NATS_URL, prefix)
        assert ws.texts == [expected_text(m["envelope"]) for m in stored]
        events = ws.events()
        assert [list(e) for e in events] == [["type", "payload", "timestamp"]] * 3
        assert [e["type"] for e in events] == ["user.created", "ticket.created", "payment.completed"]
        assert "Иван" in ws.texts[0] and "👨‍💻" in ws.texts[0] and "\\u04" not in ws.texts[0]
        assert "Не работает VPN" in ws.texts[1]
        assert list(events[2]["payload"]) == ["transaction_id", "amount_kopeks", "z", "a"], "key order kept"
        for e, m in zip(events, stored):
            assert BOT_TIMESTAMP.match(e["timestamp"]), e["timestamp"]
            assert e["timestamp"] == bot_timestamp(m["envelope"]["timestamp"])

        # The client leaves: the route unregisters, nothing more is sent.
        ws.incoming.put_nowait(None)
        await asyncio.wait_for(route, 5)
        assert emitter.websocket_count == 0
        await emitter.emit("ticket.created", {"ticket_id": 6})
        await asyncio.sleep(0.5)
        assert len(ws.texts) == 3
        emitter.unregister_websocket(ws)  # unknown now: a no-op
        emitter.unregister_websocket(object())

        # A new socket starts the feed again.
        ws2 = FakeSocket()
        emitter.register_websocket(ws2)
        assert await emitter.wait_websocket_feed()
        await emitter.emit("ticket.created", {"ticket_id": 7})
        assert await eventually(lambda: len(ws2.texts) == 1)
        assert ws2.events()[0]["payload"] == {"ticket_id": 7}
        emitter.unregister_websocket(ws2)

    run(with_emitter(prefix, body))


def test_a_failing_or_stuck_socket_is_dropped_and_does_not_hold_up_the_others(prefix: str) -> None:
    async def body(emitter: EventEmitter) -> None:
        good, failing, stuck, good2 = FakeSocket(), FakeSocket("fail"), FakeSocket("hang"), FakeSocket()
        for ws in (failing, stuck, good, good2):
            emitter.register_websocket(ws)
        assert await emitter.wait_websocket_feed()
        pub = await Publisher().connect(NATS_URL, prefix=prefix)
        started = time.monotonic()
        for i in range(20):
            await pub.publish("ticket.message_added", {"ticket_id": 1, "message_id": i})
        await pub.close()
        assert await eventually(lambda: len(good.texts) == 20 and len(good2.texts) == 20, within=5)
        assert time.monotonic() - started < 1.5, "the stuck socket (1 s timeout) held the others up"
        assert failing.send_calls == 1 and failing.texts == []
        assert await eventually(lambda: emitter.websocket_count == 2, within=3)
        assert stuck.send_calls == 1 and stuck.texts == []
        assert [e["payload"]["message_id"] for e in good.events()] == list(range(20)), "in order"
        assert good.texts == good2.texts
        emitter.unregister_websocket(failing)  # already dropped: a no-op

    run(with_emitter(prefix, body, socket_send_timeout=1.0))


def test_invalid_and_duplicate_stream_messages_are_skipped(prefix: str) -> None:
    async def body(emitter: EventEmitter) -> None:
        ws = FakeSocket()
        emitter.register_websocket(ws)
        assert await emitter.wait_websocket_feed()
        root, _ = names(prefix)
        nc = await nats.connect(NATS_URL)
        ok = {"id": "x", "type": "user.created", "timestamp": "2024-01-15T10:30:00.123456Z", "payload": {"a": 1}}
        for subject, data in [
            (f"{root}.user.created", b"not json"),
            (f"{root}.user.created", b"[1, 2]"),
            (f"{root}.user.created", b"\xff\xfe"),
            (f"{root}.user.created", json.dumps({**ok, "id": "a1", "payload": [1]}).encode()),
            (f"{root}.user.created", json.dumps({**ok, "id": "a2", "timestamp": 5}).encode()),
            (f"{root}.user.deleted", json.dumps({**ok, "id": "a3", "type": "user.deleted"}).encode()),
            (f"{root}.ticket.created", json.dumps({**ok, "id": "a4"}).encode()),  # type is not the subject's
        ]:
            await nc.publish(subject, data)
        await nc.close()
        pub = await Publisher().connect(NATS_URL, prefix=prefix)
        # The same event twice (a relay that republishes after a crash):
        # JetStream keeps one, the socket gets one.
        await pub.publish("user.created", {"user_id": 1}, id="same-id")
        await pub.publish("user.created", {"user_id": 1}, id="same-id")
        await pub.publish("user.created", {"user_id": 2}, id="other-id")
        await pub.close()
        assert await eventually(lambda: len(ws.texts) >= 2)
        await asyncio.sleep(0.5)
        assert [e["payload"] for e in ws.events()] == [{"user_id": 1}, {"user_id": 2}]

    run(with_emitter(prefix, body))


def test_listeners_get_the_bots_dict_at_the_envelopes_instant(prefix: str) -> None:
    async def body(emitter: EventEmitter) -> None:
        got: List[Dict[str, Any]] = []
        everything: List[str] = []

        async def on_ticket(event: Dict[str, Any]) -> None:
            got.append(event)

        def broken(event: Dict[str, Any]) -> None:
            raise ValueError("a listener bug")

        emitter.on("ticket.created", broken)
        emitter.on("ticket.created", on_ticket)
        emitter.on("*", lambda e: everything.append(e["type"]))
        payload = {"ticket_id": 3, "title": "Привет"}
        await emitter.emit("ticket.created", payload)
        await emitter.emit("user.created", {"user_id": 1})
        assert len(got) == 1 and list(got[0]) == ["type", "payload", "timestamp"]
        assert got[0]["payload"] is payload
        assert everything == ["ticket.created", "user.created"]
        assert BOT_TIMESTAMP.match(got[0]["timestamp"])
        stored = await stream_messages(NATS_URL, prefix)
        assert got[0]["timestamp"] == bot_timestamp(stored[0]["envelope"]["timestamp"]), "one instant"

    run(with_emitter(prefix, body))


def test_sockets_see_outbox_events_only_once_committed(database: str, prefix: str, relays) -> None:
    relays.append(RelayProcess(database, NATS_URL, prefix))

    async def body(emitter: EventEmitter) -> None:
        ws = FakeSocket()
        emitter.register_websocket(ws)
        assert await emitter.wait_websocket_feed()
        engine = create_async_engine(sqlalchemy_url(database))
        Session = async_sessionmaker(engine, expire_on_commit=False)
        from sqlalchemy import text

        async with Session() as db:
            await db.execute(text("CREATE TEMP TABLE t (x int)"))
            await db.execute(text("INSERT INTO t VALUES (1)"))
            await emitter.emit("user.created", {"user_id": 1, "first_name": "откат"}, db=db)
            await asyncio.sleep(0.5)
            assert ws.texts == [], "not before the commit"
            await db.rollback()
        async with Session() as db:
            await db.execute(text("SELECT 1"))
            await db.commit()
            await emitter.emit("user.created", {"user_id": 2, "first_name": "после коммита"}, db=db)
            await db.rollback()
        assert await eventually(lambda: len(ws.texts) == 1)
        await asyncio.sleep(0.5)
        assert [e["payload"] for e in ws.events()] == [{"user_id": 2, "first_name": "после коммита"}]
        await engine.dispose()

    run(with_emitter(prefix, body))


def test_a_socket_registered_before_connect_is_fed_after_it(prefix: str) -> None:
    async def go() -> None:
        emitter = EventEmitter()
        ws = FakeSocket()
        emitter.register_websocket(ws)  # inside the loop, before connect
        await emitter.connect(NATS_URL, prefix)
        try:
            assert await emitter.wait_websocket_feed()
            await emitter.emit("user.created", {"user_id": 1})
            assert await eventually(lambda: len(ws.texts) == 1)
        finally:
            await emitter.close()

    run(go())


def test_the_feed_resumes_after_nats_comes_back(private_nats) -> None:
    """Events published while NATS is away are not replayed to sockets (a
    documented limit); those after the reconnect arrive."""

    async def go() -> None:
        emitter = EventEmitter()
        await emitter.connect(private_nats.url, "", reconnect_time_wait=0.2)
        ws = FakeSocket()
        try:
            emitter.register_websocket(ws)
            assert await emitter.wait_websocket_feed()
            await emitter.emit("user.created", {"user_id": 1})
            assert await eventually(lambda: len(ws.texts) == 1)
            private_nats.stop()
            await asyncio.sleep(0.5)
            await asyncio.get_running_loop().run_in_executor(None, private_nats.start)
            pub = await Publisher().connect(private_nats.url)
            deadline = time.monotonic() + 20
            n = 2
            # Publish until the emitter's connection is back and subscribed.
            while len(ws.texts) < 2 and time.monotonic() < deadline:
                await pub.publish("user.created", {"user_id": n})
                n += 1
                await asyncio.sleep(0.2)
            await pub.close()
            assert len(ws.texts) >= 2
            assert emitter.websocket_count == 1
        finally:
            await emitter.close()

    run(go())

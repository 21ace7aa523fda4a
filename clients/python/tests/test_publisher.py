"""Publisher: straight to JetStream, waiting for the ack."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from bedolaga_events import InvalidEvent, Publisher, PublishTimeout, names
from conftest import NATS_URL, run, stream_len, stream_messages


def test_publish_returns_the_sequence_and_the_envelope_is_the_contract(prefix: str) -> None:
    async def go() -> None:
        pub = await Publisher().connect(NATS_URL, prefix=prefix)
        try:
            assert await pub.publish("user.created", {"user_id": 1, "first_name": "Иван"}) == 1
            assert await pub.publish("ticket.created", {"ticket_id": 5}, id="fixed-id-1") == 2
            # The same id again is dropped by JetStream: same sequence back.
            assert await pub.publish("ticket.created", {"ticket_id": 5}, id="fixed-id-1") == 2
        finally:
            await pub.close()
        msgs = await stream_messages(NATS_URL, prefix)
        assert len(msgs) == 2
        first, second = msgs
        root, _ = names(prefix)
        assert first["subject"] == f"{root}.user.created"
        env = first["envelope"]
        assert set(env) == {"id", "type", "timestamp", "payload"}
        assert first["msg_id"] == env["id"]
        assert env["type"] == "user.created"
        assert env["timestamp"].endswith("Z")
        datetime.fromisoformat(env["timestamp"].replace("Z", "+00:00"))
        assert "Иван".encode() in first["data"], "non-ASCII kept, not escaped"
        assert second["msg_id"] == "fixed-id-1"

    run(go())


def test_bad_events_are_refused_before_anything_is_sent(prefix: str) -> None:
    async def go() -> None:
        pub = await Publisher().connect(NATS_URL, prefix=prefix)
        try:
            with pytest.raises(InvalidEvent, match="unknown event type"):
                await pub.publish("user.deleted", {})
            with pytest.raises(InvalidEvent, match="must be an object"):
                await pub.publish("user.created", [1, 2])  # type: ignore[arg-type]
            with pytest.raises(InvalidEvent, match="NUL"):
                await pub.publish("user.created", {"name": "a\x00b"})
            with pytest.raises(InvalidEvent, match="event id"):
                await pub.publish("user.created", {}, id="x" * 65)
        finally:
            await pub.close()
        assert await stream_len(NATS_URL, prefix) == 0

    run(go())


def test_publish_retries_across_a_reconnect_with_the_same_msg_id(private_nats) -> None:
    async def go() -> None:
        pub = await Publisher(timeout=20.0, attempt_timeout=0.5).connect(private_nats.url)
        try:
            assert await pub.publish("user.created", {"user_id": 1}) == 1
            private_nats.stop()
            task = asyncio.create_task(pub.publish("user.created", {"user_id": 2}))
            await asyncio.sleep(1.5)
            assert not task.done(), "publish must wait for JetStream, not give up"
            await asyncio.get_running_loop().run_in_executor(None, private_nats.start)
            seq = await asyncio.wait_for(task, 20)
            assert seq == 2
        finally:
            await pub.close()
        msgs = await stream_messages(private_nats.url, "")
        assert [m["envelope"]["payload"]["user_id"] for m in msgs] == [1, 2], "stored exactly once"

    run(go())


def test_publish_raises_when_jetstream_does_not_answer_in_time(private_nats) -> None:
    async def go() -> None:
        pub = await Publisher(timeout=1.0, attempt_timeout=0.3).connect(private_nats.url)
        try:
            private_nats.stop()
            started = time.monotonic()
            with pytest.raises(PublishTimeout) as err:
                await pub.publish("user.created", {"user_id": 1}, id="will-time-out")
            assert err.value.event_id == "will-time-out"
            assert time.monotonic() - started < 3
        finally:
            await pub.close()

    run(go())

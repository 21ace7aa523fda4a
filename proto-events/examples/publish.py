#!/usr/bin/env python3
"""Publish a bedolaga event from Python, as the bot does (nats-py).

A minimal, dependency-light example of the contract. For the bot itself use
the package in clients/python (``bedolaga_events``): the same envelope, plus
retries across reconnects and the transactional outbox.

The contract (docs/contract.md, "NATS"): subject ``events.<type>`` on the JetStream
stream ``EVENTS``, a JSON envelope ``{"id","type","timestamp","payload"}``,
and the header ``Nats-Msg-Id: <id>`` so JetStream drops duplicate publishes.
``publish`` returns only once JetStream has stored the event.

    pip install nats-py
    python3 publish.py user.created '{"user_id": 1, "first_name": "Иван"}'

Environment: NATS_URL (default nats://127.0.0.1:4222) and NATS_PREFIX
(default empty: the production subject and stream names).
"""

import asyncio
import json
import os
import sys
import uuid
from datetime import datetime, timezone

import nats

EVENT_TYPES = (
    "user.created",
    "payment.completed",
    "transaction.created",
    "ticket.created",
    "ticket.status_changed",
    "ticket.message_added",
)


def names(prefix: str):
    """Subject root and stream name for a prefix, as proto_events::Namespace."""
    if not prefix:
        return "events", "EVENTS"
    return f"{prefix}.events", f"EVENTS_{prefix}"


async def publish(js, prefix: str, event_type: str, payload: dict, event_id: str = None):
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; valid: {', '.join(EVENT_TYPES)}")
    if not isinstance(payload, dict):
        raise ValueError("payload must be a JSON object")
    root, stream = names(prefix)
    envelope = {
        "id": event_id or str(uuid.uuid4()),
        "type": event_type,
        "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "payload": payload,
    }
    ack = await js.publish(
        f"{root}.{event_type}",
        json.dumps(envelope, ensure_ascii=False).encode("utf-8"),
        stream=stream,
        headers={"Nats-Msg-Id": envelope["id"]},
    )
    return envelope["id"], ack.seq, bool(ack.duplicate)


async def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    prefix = os.environ.get("NATS_PREFIX", "")
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    try:
        js = nc.jetstream()
        root, stream = names(prefix)
        try:
            await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            # The services create the stream at start; create it here too so
            # no early event is lost (same settings as the Rust side).
            await js.add_stream(
                name=stream,
                subjects=[f"{root}.>"],
                storage="file",
                duplicate_window=120,
                max_age=7 * 24 * 3600,
            )
        event_id, seq, duplicate = await publish(js, prefix, argv[1], json.loads(argv[2]))
        print(f"{event_id} seq={seq}{' (duplicate, dropped)' if duplicate else ''}")
    finally:
        await nc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))

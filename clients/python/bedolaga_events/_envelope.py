"""The event envelope and the catalogue, as proto-events has them.

Both are described in docs/contract.md ("NATS", "Event catalogue").
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Mapping, Optional, Tuple

#: The event types of the catalogue, in catalogue order.
EVENT_TYPES: Tuple[str, ...] = (
    "user.created",
    "payment.completed",
    "transaction.created",
    "ticket.created",
    "ticket.status_changed",
    "ticket.message_added",
)

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]*$")
# A NUL written by json.dumps as \u0000 and not itself an escaped backslash.
_NUL_RE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class InvalidEvent(ValueError):
    """The event cannot be published: unknown type, a payload that is not an
    object, a bad id, or a payload no consumer could store."""


def names(prefix: str = "") -> Tuple[str, str]:
    """Subject root and stream name for a prefix (as ``proto_events::Namespace``)."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"NATS prefix {prefix!r} must be letters, digits, '_' or '-' only")
    if not prefix:
        return "events", "EVENTS"
    return f"{prefix}.events", f"EVENTS_{prefix}"


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): ids sort by creation time, like the Rust side's."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    return str(uuid.UUID(int=value))


def rfc3339(moment: datetime) -> str:
    """An aware datetime as RFC 3339 in UTC with microseconds and a ``Z``."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def now_timestamp() -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``."""
    return rfc3339(datetime.now(timezone.utc))


_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$"
)


def bot_timestamp(timestamp: str) -> str:
    """An envelope timestamp written the way the bot writes its events'
    ``timestamp``: ``str(datetime.now(UTC))``, e.g.
    ``2026-08-20 09:39:04.123456+00:00`` (no fraction when it is zero, as
    ``str`` does). A time without an offset is read as UTC (docs/contract.md,
    "Conventions"); digits past microseconds are cut. Text that is not a
    time is returned as it is."""
    m = _RFC3339_RE.match(timestamp)
    if m is None:
        return timestamp
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    offset = timezone.utc
    if m.group(9):
        minutes = int(m.group(10)) * 60 + int(m.group(11))
        offset = timezone(timedelta(minutes=-minutes if m.group(9) == "-" else minutes))
    try:
        moment = datetime(year, month, day, hour, minute, second, micro, tzinfo=offset)
    except ValueError:
        return timestamp
    return str(moment.astimezone(timezone.utc))


def dumps(value: Any) -> str:
    """JSON the way the bot serialises events: anything unknown (datetime,
    Decimal, UUID, enums) through ``str``, non-ASCII characters kept."""
    return json.dumps(value, default=str, ensure_ascii=False)


def check_type(event_type: Any) -> str:
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise InvalidEvent(f"unknown event type {event_type!r}; valid types: {', '.join(EVENT_TYPES)}")
    return event_type


def build(
    event_type: str,
    payload: Mapping[str, Any],
    event_id: Optional[str] = None,
    timestamp: Optional[str] = None,
) -> Tuple[Dict[str, Any], str]:
    """Checks an event and returns its envelope and the envelope's JSON text."""
    check_type(event_type)
    if not isinstance(payload, Mapping):
        raise InvalidEvent(f"payload must be an object (a dict), got {type(payload).__name__}")
    if event_id is None:
        event_id = new_event_id()
    if (
        not isinstance(event_id, str)
        or not 1 <= len(event_id) <= 64
        or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in event_id)
    ):
        raise InvalidEvent("event id must be 1 to 64 characters without control characters")
    envelope = {
        "id": event_id,
        "type": event_type,
        "timestamp": timestamp or now_timestamp(),
        "payload": dict(payload),
    }
    try:
        text = dumps(envelope)
    except (TypeError, ValueError) as e:  # circular references, NaN keys, …
        raise InvalidEvent(f"payload cannot be serialised as JSON: {e}") from e
    if _NUL_RE.search(text):
        # PostgreSQL text and jsonb cannot hold U+0000: consumers would
        # dead-letter the event and the outbox cannot store it.
        raise InvalidEvent("payload contains a NUL character (\\u0000), which cannot be stored")
    return envelope, text

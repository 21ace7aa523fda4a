"""bedolaga-events for the bot: publish events to NATS JetStream directly
(:class:`Publisher`) or through the transactional outbox
(:class:`EventEmitter` with ``db=session``, relayed by ``outbox-relay``).

The bot's ``app/services/event_emitter.py`` becomes the one line
``from bedolaga_events import event_emitter, EventEmitter``: every
``from app.services.event_emitter import event_emitter`` keeps working."""

from ._envelope import EVENT_TYPES, InvalidEvent, dumps, names, new_event_id
from .emitter import ALL, EventEmitter, Listener
from .publisher import Publisher, PublishTimeout

__all__ = [
    "ALL",
    "EVENT_TYPES",
    "EventEmitter",
    "InvalidEvent",
    "Listener",
    "PublishTimeout",
    "Publisher",
    "dumps",
    "event_emitter",
    "names",
    "new_event_id",
]

__version__ = "0.1.0"

#: The module-level emitter, as ``app.services.event_emitter`` has one.
event_emitter = EventEmitter()

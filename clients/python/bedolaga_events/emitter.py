"""A drop-in for the bot's ``app.services.event_emitter.EventEmitter``."""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Union

from ._envelope import build
from .publisher import Publisher

log = logging.getLogger("bedolaga_events")

#: A listener gets the envelope ``{"id","type","timestamp","payload"}``.
Listener = Callable[[Dict[str, Any]], Union[None, Awaitable[None]]]

#: Listeners registered under this name get every event.
ALL = "*"


class EventEmitter:
    """The bot's emitter interface: ``emit(event_type, payload, db=None)``,
    ``on`` and ``off``.

    - With ``db`` (an SQLAlchemy ``AsyncSession``) the event is written to
      the ``event_outbox`` table in that session's transaction; it is
      published by ``outbox-relay`` once the transaction commits, and never
      if it rolls back. Nothing is sent to NATS from the bot.
    - Without ``db`` it is published to JetStream directly and ``emit``
      waits for the ack; a failure after the publisher's timeout is logged
      and the event is lost (``raise_errors=True`` raises instead). Prefer
      ``db`` for anything that must not be lost.

    In-process listeners (``on``) are called in both cases, right after the
    write or publish, as the bot's emitter did. The direct publisher
    connects on first use to ``NATS_URL`` with ``NATS_PREFIX`` unless
    :meth:`connect` or a ``publisher`` was given."""

    def __init__(self, publisher: Optional[Publisher] = None, *, raise_errors: bool = False) -> None:
        self._listeners: Dict[str, List[Listener]] = {}
        self._publisher = publisher
        self._own_publisher = False
        self.raise_errors = raise_errors

    def on(self, event_type: str, callback: Listener) -> None:
        """Calls ``callback(envelope)`` for every event of ``event_type``
        (``"*"``: every event). Coroutine functions are awaited."""
        self._listeners.setdefault(event_type, []).append(callback)

    def off(self, event_type: str, callback: Listener) -> None:
        """Removes a listener added with :meth:`on`; unknown ones are ignored."""
        callbacks = self._listeners.get(event_type, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self._listeners.pop(event_type, None)

    async def connect(
        self, servers: Optional[str] = None, prefix: Optional[str] = None, **options: Any
    ) -> None:
        """Opens the direct publisher (defaults: ``NATS_URL``, ``NATS_PREFIX``)."""
        await self.close()
        self._publisher = await Publisher().connect(
            servers or os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
            prefix if prefix is not None else os.environ.get("NATS_PREFIX", ""),
            **options,
        )
        self._own_publisher = True

    async def close(self) -> None:
        if self._publisher is not None and self._own_publisher:
            await self._publisher.close()
            self._publisher = None
        self._own_publisher = False

    async def emit(self, event_type: str, payload: Mapping[str, Any], db: Any = None) -> None:
        """Emits one event; see the class documentation. Raises
        ``InvalidEvent`` for an unknown type or a payload that is not a dict."""
        envelope, body = build(event_type, payload)
        if db is not None:
            from .outbox import _INSERT

            await db.execute(_INSERT, {"envelope": body})
        else:
            try:
                if self._publisher is None:
                    await self.connect()
                assert self._publisher is not None
                await self._publisher.publish_raw(envelope["id"], event_type, body.encode("utf-8"))
            except Exception as e:  # noqa: BLE001 - see raise_errors
                if self.raise_errors:
                    raise
                log.error("event %s (%s) was not published: %r", envelope["id"], event_type, e)
        await self._call_listeners(envelope)

    async def _call_listeners(self, envelope: Dict[str, Any]) -> None:
        for callback in [*self._listeners.get(envelope["type"], []), *self._listeners.get(ALL, [])]:
            try:
                result = callback(envelope)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # noqa: BLE001 - one listener must not break the others
                log.exception("event listener %r failed for %s", callback, envelope["type"])

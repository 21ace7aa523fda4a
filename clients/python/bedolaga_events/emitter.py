"""A drop-in for the bot's ``app.services.event_emitter``: the bot's file
becomes ``from bedolaga_events import event_emitter, EventEmitter``."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Tuple, Union

from ._envelope import EVENT_TYPES, bot_timestamp, build, rfc3339
from .publisher import Publisher

log = logging.getLogger("bedolaga_events")

#: A listener gets the bot's event dict ``{"type", "payload", "timestamp"}``.
Listener = Callable[[Dict[str, Any]], Union[None, Awaitable[None]]]

#: Listeners registered under this name get every event.
ALL = "*"

#: How many recent event ids the socket feed remembers to drop a message
#: published twice (a relay that died before its commit publishes its
#: batch again; JetStream keeps one copy, core subscribers see both).
SEEN_IDS = 10_000


class _Feed:
    """One registered socket: its queue and the task that writes it."""

    __slots__ = ("queue", "task")

    def __init__(self, limit: int) -> None:
        self.queue: "asyncio.Queue[str]" = asyncio.Queue(limit)
        self.task: Optional["asyncio.Task[None]"] = None


class EventEmitter:
    """The bot's emitter: ``on``, ``off``, ``register_websocket``,
    ``unregister_websocket`` and ``emit(event_type, payload, db=None)``.

    ``emit`` with ``db`` (an SQLAlchemy ``AsyncSession`` or
    ``AsyncConnection``) writes the event to the ``event_outbox`` table,
    which ``outbox-relay`` publishes:

    - if ``db``'s transaction has written, the row joins it and exists only
      if the caller commits;
    - otherwise (the bot's usual case: ``emit`` after its own ``commit()``,
      maybe after a ``refresh()``) the row is committed in a transaction of
      its own, on a side connection to ``db``'s database (a pool made from
      ``db``'s engine, see :func:`bedolaga_events.outbox.store`), before
      ``emit`` returns. Whatever the caller does with ``db`` next, the event stays.

    Without ``db`` the event is published to JetStream directly and ``emit``
    waits for the ack; a failure after the publisher's timeout is logged and
    the event is lost (``raise_errors=True`` raises instead). Database errors
    of the ``db`` path always propagate, as the bot's own writes would.

    Listeners (``on``) are called after the write or publish, with the bot's
    dict ``{"type", "payload", "timestamp"}`` (``timestamp`` as
    ``str(datetime.now(UTC))``, the same instant as the envelope's RFC 3339
    ``timestamp``). ``"*"`` listens to every type.

    Registered WebSockets (``register_websocket``) are fed from the NATS
    event stream, not from ``emit``: they get every event any process
    published (and only those), as the text
    ``json.dumps({"type", "payload", "timestamp"}, default=str, ensure_ascii=False)``.
    See the package README ("WebSockets") for the design and its limits.

    The NATS connection is opened on first use from ``NATS_URL`` and
    ``NATS_PREFIX`` unless :meth:`connect` or a ``publisher`` was given."""

    def __init__(
        self,
        publisher: Optional[Publisher] = None,
        *,
        raise_errors: bool = False,
        socket_send_timeout: float = 5.0,
        socket_queue_limit: int = 1000,
    ) -> None:
        if socket_send_timeout <= 0 or socket_queue_limit <= 0:
            raise ValueError("socket_send_timeout and socket_queue_limit must be positive")
        self._listeners: Dict[str, List[Listener]] = {}
        self._publisher = publisher
        self._own_publisher = False
        self._connecting: Optional[asyncio.Lock] = None
        self.raise_errors = raise_errors
        self.socket_send_timeout = socket_send_timeout
        self.socket_queue_limit = socket_queue_limit
        # Registered sockets, in registration order.
        self._sockets: Dict[Any, _Feed] = {}
        self._pump: Optional["asyncio.Task[None]"] = None
        self._pump_stop: Optional[asyncio.Event] = None
        self._pump_generation = 0
        self._feeding: Optional[asyncio.Event] = None
        self._seen: "OrderedDict[str, None]" = OrderedDict()

    # -- listeners ---------------------------------------------------------

    def on(self, event_type: str, callback: Listener) -> None:
        """Calls ``callback(event)`` for every event of ``event_type``
        (``"*"``: every event). Coroutine functions are awaited."""
        self._listeners.setdefault(event_type, []).append(callback)

    def off(self, event_type: str, callback: Listener) -> None:
        """Removes a listener added with :meth:`on`; unknown ones are ignored."""
        callbacks = self._listeners.get(event_type, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self._listeners.pop(event_type, None)

    # -- connection --------------------------------------------------------

    async def connect(
        self, servers: Optional[str] = None, prefix: Optional[str] = None, **options: Any
    ) -> None:
        """Opens the NATS connection (defaults: ``NATS_URL``, ``NATS_PREFIX``),
        used to publish without ``db`` and to feed registered sockets."""
        await self._stop_pump()
        await self._close_publisher()
        await self._open(servers, prefix, **options)
        self._ensure_pump()

    async def _open(
        self, servers: Optional[str] = None, prefix: Optional[str] = None, **options: Any
    ) -> None:
        self._publisher = await Publisher().connect(
            servers or os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
            prefix if prefix is not None else os.environ.get("NATS_PREFIX", ""),
            **options,
        )
        self._own_publisher = True

    async def close(self) -> None:
        """Stops feeding sockets and closes the connection this emitter
        opened. Sockets stay registered; a later :meth:`connect` (or the
        next registration) feeds them again."""
        await self._stop_pump()
        await self._close_publisher()

    async def _close_publisher(self) -> None:
        if self._publisher is not None and self._own_publisher:
            await self._publisher.close()
            self._publisher = None
        self._own_publisher = False

    async def _connected(self) -> Publisher:
        if self._publisher is None:
            if self._connecting is None:
                self._connecting = asyncio.Lock()
            async with self._connecting:
                if self._publisher is None:
                    await self._open()
        assert self._publisher is not None
        return self._publisher

    # -- emit --------------------------------------------------------------

    async def emit(self, event_type: str, payload: Mapping[str, Any], db: Any = None) -> None:
        """Emits one event; see the class documentation. Raises
        ``InvalidEvent`` for an unknown type or a payload that is not a dict,
        before anything is written."""
        now = datetime.now(timezone.utc)
        envelope, body = build(event_type, payload, timestamp=rfc3339(now))
        if db is not None:
            from .outbox import store

            how = await store(db, body)
            log.debug("event %s (%s) written to the outbox (%s)", envelope["id"], event_type, how)
        else:
            try:
                publisher = await self._connected()
                await publisher.publish_raw(envelope["id"], event_type, body.encode("utf-8"))
            except Exception as e:  # noqa: BLE001 - see raise_errors
                if self.raise_errors:
                    raise
                log.error("event %s (%s) was not published: %r", envelope["id"], event_type, e)
        await self._call_listeners({"type": event_type, "payload": payload, "timestamp": str(now)})

    async def _call_listeners(self, event: Dict[str, Any]) -> None:
        for callback in [*self._listeners.get(event["type"], []), *self._listeners.get(ALL, [])]:
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # noqa: BLE001 - one listener must not break the others
                log.exception("event listener %r failed for %s", callback, event["type"])

    # -- WebSockets --------------------------------------------------------

    def register_websocket(self, websocket: Any) -> None:
        """Feeds ``websocket`` (anything with ``async send_text(str)``, e.g. a
        Starlette/FastAPI ``WebSocket``) every event of the NATS event
        stream from now on. The stream subscription starts with the first
        socket, on the running event loop."""
        if websocket in self._sockets:
            return
        self._sockets[websocket] = _Feed(self.socket_queue_limit)
        log.debug("WebSocket registered; %d in all", len(self._sockets))
        self._ensure_pump()

    def unregister_websocket(self, websocket: Any) -> None:
        """Stops feeding ``websocket``; unknown sockets are ignored. The
        stream subscription ends with the last socket."""
        feed = self._sockets.pop(websocket, None)
        if feed is None:
            return
        log.debug("WebSocket unregistered; %d in all", len(self._sockets))
        if feed.task is not None and feed.task is not _current_task():
            feed.task.cancel()
        if not self._sockets and self._pump_stop is not None:
            self._pump_stop.set()

    @property
    def websocket_count(self) -> int:
        return len(self._sockets)

    async def wait_websocket_feed(self, timeout: float = 10.0) -> bool:
        """Waits until registered sockets are fed (the stream subscription is
        in place at the server); False after ``timeout`` or without sockets.
        Events published before that are not sent to the sockets."""
        if self._feeding is None:
            return False
        try:
            await asyncio.wait_for(self._feeding.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _ensure_pump(self) -> None:
        """Starts the subscription and the socket writers that are missing;
        a no-op without sockets or outside an event loop (``connect`` or the
        next registration starts them then)."""
        if not self._sockets:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for ws, feed in self._sockets.items():
            if feed.task is None or feed.task.done():
                feed.task = loop.create_task(self._write_socket(ws, feed))
        if self._pump is None or self._pump.done():
            self._pump_generation += 1
            self._pump_stop = asyncio.Event()
            self._feeding = asyncio.Event()
            self._pump = loop.create_task(
                self._run_pump(self._pump_generation, self._pump_stop, self._feeding)
            )
        elif self._pump_stop is not None:
            self._pump_stop.clear()

    async def _stop_pump(self) -> None:
        pump, stop = self._pump, self._pump_stop
        self._pump, self._pump_stop, self._feeding = None, None, None
        self._pump_generation += 1
        for feed in self._sockets.values():
            if feed.task is not None and feed.task is not _current_task():
                feed.task.cancel()
            feed.task = None
        if pump is not None and not pump.done():
            if stop is not None:
                stop.set()
            try:
                await asyncio.wait_for(pump, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pump.cancel()
            except Exception:  # noqa: BLE001 - it only logs
                pass

    async def _run_pump(self, generation: int, stop: asyncio.Event, feeding: asyncio.Event) -> None:
        """Holds a core NATS subscription on ``<root>.>`` while sockets are
        registered. JetStream stores those subjects and core subscribers get
        the same messages; the connection reconnects by itself."""
        sub = None
        delay = 0.1
        try:
            while sub is None and not stop.is_set():
                try:
                    publisher = await self._connected()
                    nc, root = publisher.connection, publisher.subject_root
                    if nc is None:
                        raise RuntimeError("not connected")

                    async def on_message(msg: Any, root: str = root) -> None:
                        if generation == self._pump_generation:
                            self._fan_out(msg, root)

                    sub = await nc.subscribe(f"{root}.>", cb=on_message)
                    try:
                        await nc.flush(timeout=2)  # the server has the subscription now
                    except Exception as e:  # noqa: BLE001 - resent on reconnect
                        log.debug("flush after subscribing failed: %r", e)
                    feeding.set()
                    log.debug("feeding WebSockets from %s.>", root)
                except Exception as e:  # noqa: BLE001 - retried
                    log.warning("WebSocket feed cannot subscribe (retrying in %.1fs): %r", delay, e)
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                    delay = min(delay * 2, 5.0)
            while True:
                await stop.wait()
                if self._sockets and generation == self._pump_generation:
                    stop.clear()  # a socket registered again meanwhile
                    continue
                break
        finally:
            if self._pump is _current_task():
                self._pump = None
            if self._feeding is feeding:
                self._feeding = None
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception as e:  # noqa: BLE001 - the connection may be gone
                    log.debug("WebSocket feed unsubscribe failed: %r", e)

    def _fan_out(self, msg: Any, root: str) -> None:
        text = self._socket_text(msg, root)
        if text is None:
            return
        for ws, feed in list(self._sockets.items()):
            try:
                feed.queue.put_nowait(text)
            except asyncio.QueueFull:
                log.warning(
                    "WebSocket dropped: more than %d events waiting for it", self.socket_queue_limit
                )
                self.unregister_websocket(ws)

    def _socket_text(self, msg: Any, root: str) -> Optional[str]:
        """The bot's socket message for a stream message, or ``None`` for
        one that is not a valid event or was seen already."""
        try:
            envelope = json.loads(msg.data)
        except (ValueError, UnicodeDecodeError):
            log.debug("skipped a message on %s that is not JSON", msg.subject)
            return None
        if not isinstance(envelope, dict):
            return None
        event_type, payload, timestamp = (
            envelope.get("type"),
            envelope.get("payload"),
            envelope.get("timestamp"),
        )
        if (
            event_type not in EVENT_TYPES
            or msg.subject != f"{root}.{event_type}"
            or not isinstance(payload, dict)
            or not isinstance(timestamp, str)
        ):
            log.debug("skipped an invalid event on %s", msg.subject)
            return None
        event_id = envelope.get("id")
        if isinstance(event_id, str):
            if event_id in self._seen:
                return None
            self._seen[event_id] = None
            if len(self._seen) > SEEN_IDS:
                self._seen.popitem(last=False)
        return json.dumps(
            {"type": event_type, "payload": payload, "timestamp": bot_timestamp(timestamp)},
            default=str,
            ensure_ascii=False,
        )

    async def _write_socket(self, ws: Any, feed: _Feed) -> None:
        """Writes one socket's queue in order; a send that fails or takes
        longer than ``socket_send_timeout`` unregisters the socket."""
        while True:
            text = await feed.queue.get()
            try:
                await asyncio.wait_for(ws.send_text(text), self.socket_send_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the socket is gone or stuck
                if isinstance(e, asyncio.TimeoutError):
                    reason = f"no send within {self.socket_send_timeout:g}s"
                else:
                    reason = repr(e)
                log.warning("WebSocket send failed, unregistered: %s", reason)
                if self._sockets.get(ws) is feed:
                    self.unregister_websocket(ws)
                return


def _current_task() -> Optional["asyncio.Task[Any]"]:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


__all__: Tuple[str, ...] = ("ALL", "EventEmitter", "Listener")

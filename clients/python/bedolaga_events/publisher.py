"""Publishing straight to JetStream, waiting for the ack (docs/contract.md,
"NATS")."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, List, Mapping, Optional, Sequence, Union

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from ._envelope import build, names

log = logging.getLogger("bedolaga_events")

#: How long JetStream remembers a Nats-Msg-Id, as the Rust services create it.
DUPLICATE_WINDOW_SECS = 120
#: How long events are kept when this package creates the stream.
MAX_AGE_SECS = 7 * 24 * 3600

# Failures after which the same message may be stored on a later try: the
# server was unreachable, reconnecting, restarting, or slow to answer.
_TRANSIENT = (
    asyncio.TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    OSError,
)


class PublishTimeout(Exception):
    """JetStream did not confirm the event within the publisher's timeout.

    The event may or may not be stored; publishing it again with the same
    id is safe (JetStream drops the duplicate within its window)."""

    def __init__(self, event_id: str, timeout: float, last_error: Optional[BaseException]):
        super().__init__(
            f"event {event_id} not confirmed by JetStream within {timeout:g}s"
            + (f" (last error: {last_error!r})" if last_error else "")
        )
        self.event_id = event_id
        self.last_error = last_error


def _server_list(servers: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(servers, str):
        return [s.strip() for s in servers.split(",") if s.strip()]
    return list(servers)


class Publisher:
    """Publishes events to ``<prefix.>events.<type>`` and returns the stream
    sequence once JetStream has stored them.

    ``timeout`` bounds one :meth:`publish` call, retries included; each try
    waits at most ``attempt_timeout`` for the ack. Every try carries the same
    ``Nats-Msg-Id``, so a try whose ack was lost is not stored twice."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        attempt_timeout: float = 2.0,
        ensure_stream: bool = True,
    ) -> None:
        if timeout <= 0 or attempt_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self._ensure = ensure_stream
        self._nc: Optional[NATS] = None
        self._js: Any = None
        self._root, self._stream = names("")
        self._stream_ok = False
        self._own_connection = False

    @property
    def stream(self) -> str:
        return self._stream

    @property
    def subject_root(self) -> str:
        """``events`` or ``<prefix>.events``: every event subject starts with it."""
        return self._root

    @property
    def connection(self) -> Optional[NATS]:
        """The NATS connection (``None`` before :meth:`connect` or :meth:`use`)."""
        return self._nc

    def subject(self, event_type: str) -> str:
        return f"{self._root}.{event_type}"

    async def connect(
        self,
        servers: Union[str, Sequence[str]] = "nats://127.0.0.1:4222",
        prefix: str = "",
        **options: Any,
    ) -> "Publisher":
        """Connects (a comma-separated string or a list of URLs); extra
        keyword arguments go to ``nats.connect`` (``user_credentials``,
        ``tls``, …). Reconnects forever by default. Returns ``self``."""
        self._root, self._stream = names(prefix)
        options.setdefault("max_reconnect_attempts", -1)
        options.setdefault("reconnect_time_wait", 0.5)
        options.setdefault("name", "bedolaga-events-python")
        self._nc = await nats.connect(servers=_server_list(servers), **options)
        self._own_connection = True
        self._js = self._nc.jetstream(timeout=self.attempt_timeout)
        if self._ensure:
            await self._ensure_stream()
        return self

    async def use(self, nc: NATS, prefix: str = "") -> "Publisher":
        """Uses a connection the caller owns (not closed by :meth:`close`)."""
        self._root, self._stream = names(prefix)
        self._nc = nc
        self._own_connection = False
        self._js = nc.jetstream(timeout=self.attempt_timeout)
        if self._ensure:
            await self._ensure_stream()
        return self

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and self._own_connection and not nc.is_closed:
            try:
                await nc.close()
            except (OSError, nats.errors.Error) as e:
                # nats-py flushes on close, which fails while disconnected.
                log.debug("NATS connection closed with an error: %r", e)

    async def __aenter__(self) -> "Publisher":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def _ensure_stream(self) -> None:
        """Creates the events stream when it is missing, with the settings
        the Rust services use; an existing stream is left as it is."""
        try:
            await self._js.stream_info(self._stream)
        except nats.js.errors.NotFoundError:
            try:
                await self._js.add_stream(
                    name=self._stream,
                    subjects=[f"{self._root}.>"],
                    storage="file",
                    duplicate_window=DUPLICATE_WINDOW_SECS,
                    max_age=MAX_AGE_SECS,
                )
            except nats.js.errors.BadRequestError:
                pass  # created meanwhile by another publisher or service
        self._stream_ok = True

    async def publish(
        self,
        type: str,
        payload: Mapping[str, Any],
        id: Optional[str] = None,
    ) -> int:
        """Publishes ``payload`` as an event of ``type`` and returns its
        stream sequence. Raises :class:`~bedolaga_events.InvalidEvent` for a
        bad event (before anything is sent) and :class:`PublishTimeout` when
        JetStream did not confirm it in time."""
        envelope, text = build(type, payload, id)
        return await self.publish_raw(envelope["id"], type, text.encode("utf-8"))

    async def publish_raw(self, event_id: str, event_type: str, body: bytes) -> int:
        """Publishes an envelope that is already serialised (the caller
        checked it); returns the stream sequence."""
        if self._nc is None:
            raise RuntimeError("Publisher is not connected: await connect() first")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        subject = self.subject(event_type)
        last: Optional[BaseException] = None
        delay = 0.05
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PublishTimeout(event_id, self.timeout, last)
            try:
                if self._ensure and not self._stream_ok:
                    await asyncio.wait_for(self._ensure_stream(), remaining)
                ack = await self._js.publish(
                    subject,
                    body,
                    timeout=max(0.001, min(self.attempt_timeout, remaining)),
                    stream=self._stream,
                    headers={"Nats-Msg-Id": event_id},
                )
                return int(ack.seq)
            except nats.errors.ConnectionClosedError:
                raise
            except nats.js.errors.NoStreamResponseError as e:
                # No stream on the subject: created again on the next try.
                self._stream_ok = False
                last = e
            except _TRANSIENT as e:
                last = e
            log.debug("publish of %s not confirmed yet: %r", event_id, last)
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 1.0)

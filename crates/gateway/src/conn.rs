//! One WebSocket or SSE connection after the handshake: a task that owns
//! the TCP socket and `select!`s over close requests, its queue in the hub,
//! a replay from the stream, client frames, writability and one timer. The
//! two transports differ only in how messages are framed (see
//! [`Transport`]), in what the client may send (nothing on SSE: its bytes
//! are read and dropped) and in how a close is said.
//!
//! Frames go out with vectored writes straight from the shared event
//! buffers (no copy per client). While the task is parked with nothing to
//! write, live events are written by the shard task instead (see `hub`);
//! the first thing the task does on waking is take back a frame the shard
//! left half sent. Every server-initiated close sends the
//! close frame and then the FIN at once; a client's close is echoed and
//! followed by the FIN at once (RFC 6455 §7.1.1). The socket is then
//! drained briefly so unread client bytes never turn the close into a reset.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use proto_events::PatternSet;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::hub::{Client, Close, Signal, Take};
use crate::metrics::{CloseKind, Metrics};
use crate::protocol::{self, ClientMessage, EventFrame, Transport};
use crate::replay;
use crate::state::AppState;
use crate::wire::{self, Inbound, WireError, code};

/// How long a close frame may take to get out to a stalled client.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the FIN, how long the socket is drained while the client closes
/// its side.
const LINGER: Duration = Duration::from_secs(2);
/// A replay that yields nothing for this long has failed.
const REPLAY_IDLE: Duration = Duration::from_secs(10);
/// Stream events and client frames are taken only while less than this
/// is waiting to be written: the socket sets the pace.
const OUT_HIGH: usize = 64 * 1024;
/// Most frames in one vectored write.
const IOV: usize = 64;
/// Most bytes read from a socket per wake-up.
const READ_CHUNK: usize = 8 * 1024;
/// An SSE client is never timed out for silence (it has nothing to say).
const SSE_SILENCE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What the connection URL asked for besides the token.
pub struct Start {
    /// Resume after this sequence, or why the position asked for is not
    /// one.
    pub since: Option<Result<u64, String>>,
    pub epoch: Option<String>,
    pub events: Option<Result<(PatternSet, Vec<String>), String>>,
}

/// One item waiting to be written.
enum Out {
    /// An event frame shared with every other client.
    Event(Arc<EventFrame>),
    /// A complete frame of this connection (replies, pongs, close).
    Frame(Bytes),
}

impl Out {
    fn len(&self, transport: Transport) -> usize {
        self.bytes(transport).len()
    }

    fn bytes(&self, transport: Transport) -> &[u8] {
        match self {
            Out::Event(f) => f.bytes(transport),
            Out::Frame(b) => b,
        }
    }
}

/// Frames waiting for the socket.
struct Outbox {
    transport: Transport,
    items: VecDeque<Out>,
    /// Bytes of the front item already written.
    offset: usize,
    bytes: usize,
    /// Event frames written whole so far.
    events_written: u64,
}

impl Outbox {
    fn new(transport: Transport) -> Self {
        Self {
            transport,
            items: VecDeque::new(),
            offset: 0,
            bytes: 0,
            events_written: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn push(&mut self, item: Out) {
        self.bytes += item.len(self.transport);
        self.items.push_back(item);
    }

    /// Queues one message (not an event) whose `type` is `kind`.
    fn message(&mut self, kind: &str, json: &str) {
        self.push(Out::Frame(self.transport.message(kind, json)));
    }

    /// Drops everything not started yet (a partly written frame must be
    /// finished before anything else).
    fn discard_unstarted(&mut self) {
        let keep = usize::from(self.offset > 0).min(self.items.len());
        self.items.truncate(keep);
        self.bytes = self.items.iter().map(|o| o.len(self.transport)).sum();
        if self.items.capacity() > 64 {
            self.items.shrink_to(8);
        }
    }

    /// One vectored write of what is queued; `WouldBlock` when the socket
    /// is full.
    fn write_to(&mut self, tcp: &TcpStream) -> io::Result<usize> {
        let mut iov = [IoSlice::new(&[]); IOV];
        let k = self.items.len().min(IOV);
        for (i, item) in self.items.iter().take(k).enumerate() {
            let bytes = item.bytes(self.transport);
            // the front item may be partly written already
            let skip = if i == 0 { self.offset } else { 0 };
            iov[i] = IoSlice::new(&bytes[skip..]);
        }
        let n = tcp.try_write_vectored(&iov[..k])?;
        if n == 0 && k > 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.advance(n);
        Ok(n)
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.items.front() else {
                return;
            };
            let len = front.len(self.transport);
            let left = len - self.offset;
            if n >= left {
                n -= left;
                if let Some(Out::Event(_)) = self.items.pop_front() {
                    self.events_written += 1;
                }
                self.offset = 0;
                self.bytes -= len;
            } else {
                self.offset += n;
                return;
            }
        }
        if self.items.is_empty() && self.items.capacity() > 64 {
            self.items = VecDeque::new();
        }
    }
}

/// Why the connection loop ended.
enum Stop {
    /// The server closes with this code and reason.
    Close(Close),
    /// The client's bytes are not valid WebSocket frames.
    Fail(WireError),
    /// The client sent a close frame (with this code); echo it.
    ClientClose(Option<u16>),
    /// The connection is gone; nothing can be sent.
    Gone,
}

/// Why stored events are being fed to the client.
enum FeedKind {
    /// The client asked to resume after a sequence.
    Resume,
    /// The client's queue overflowed; it holds a catch-up slot.
    CatchUp { _slot: CatchupSlot },
}

/// One of `GATEWAY_MAX_CATCHUP_CLIENTS`, counted in the gauge while held.
struct CatchupSlot {
    metrics: Metrics,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for CatchupSlot {
    fn drop(&mut self) {
        self.metrics.catchup_clients.dec();
    }
}

/// A feed of stored events from the stream (a resume replay or a
/// catch-up), read at the pace the client's socket takes them, until it
/// hands the client back to live events with no gap and no duplicate.
struct Feed {
    kind: FeedKind,
    messages: Box<jetstream::consumer::pull::Ordered>,
    idle: Pin<Box<tokio::time::Sleep>>,
    epoch: Arc<str>,
    /// The stream's first kept sequence when the feed began (for a
    /// `resync_required` it ends with).
    first_seq: u64,
    /// Events after this are sent.
    since: u64,
    /// The feed has caught up once it reaches this sequence.
    until: u64,
    sent: u64,
}

enum FeedItem {
    Message(Box<jetstream::Message>),
    Failed(String),
}

/// Polls the feed, if one runs; one that yields nothing for
/// [`REPLAY_IDLE`] has failed.
fn poll_feed(feed: &mut Option<Box<Feed>>, cx: &mut Context<'_>) -> Poll<FeedItem> {
    let Some(f) = feed.as_mut() else {
        return Poll::Pending;
    };
    match f.messages.poll_next_unpin(cx) {
        Poll::Ready(Some(Ok(m))) => {
            f.idle.as_mut().reset(Instant::now() + REPLAY_IDLE);
            Poll::Ready(FeedItem::Message(Box::new(m)))
        }
        Poll::Ready(Some(Err(e))) => Poll::Ready(FeedItem::Failed(e.to_string())),
        Poll::Ready(None) => Poll::Ready(FeedItem::Failed("the replay stream ended".into())),
        Poll::Pending => match f.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(FeedItem::Failed("the replay stalled".into())),
            Poll::Pending => Poll::Pending,
        },
    }
}

/// An upgraded connection (or an SSE request) whose token is not checked
/// yet. A WebSocket has had its `101` already; an SSE request gets its
/// `200` (or an HTTP error) here.
pub struct Accepted {
    pub state: Arc<AppState>,
    pub tcp: TcpStream,
    pub transport: Transport,
    /// The response head to send once the token is accepted (SSE's
    /// `200`; empty for a WebSocket, whose `101` is sent).
    pub head: Bytes,
    /// Bytes that came after the handshake request.
    pub read: BytesMut,
    pub token: Option<String>,
    pub ip: Option<String>,
    pub start: Start,
}

/// Counts one open connection in the gauge while it lives.
struct Open {
    state: Arc<AppState>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.state.metrics.connections_open.dec();
    }
}

/// A client registered in the hub, unregistered when the connection ends
/// however it ends.
struct Registered {
    state: Arc<AppState>,
    client: Arc<Client>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.state.hub.unregister(&self.client);
    }
}

impl Accepted {
    pub async fn serve(self) {
        let Self {
            state,
            tcp,
            transport,
            head,
            read,
            token,
            ip,
            start,
        } = self;
        let mut decoder = wire::Decoder::new(state.settings.max_frame_bytes);
        if transport == Transport::WebSocket {
            decoder.buffer().extend_from_slice(&read);
        }
        drop(read);
        let mut conn = Conn {
            state: state.clone(),
            tcp: Arc::new(tcp),
            decoder,
            out: Outbox::new(transport),
            feed: None,
        };
        let Ok(permit) = state.connections.clone().try_acquire_owned() else {
            Box::pin(conn.refuse(Close::new(
                code::AGAIN,
                "Try again later: too many connections",
                CloseKind::TooManyConnections,
            )))
            .await;
            return;
        };
        state.metrics.connections_open.inc();
        state.metrics.connections_total.inc();
        let _open = Open {
            state: state.clone(),
            _permit: permit,
        };
        let principal = match Box::pin(authenticate(&state, token, ip.as_deref())).await {
            Ok(p) => p,
            Err(close) => {
                Box::pin(conn.refuse(close)).await;
                return;
            }
        };
        if !head.is_empty() {
            conn.out.push(Out::Frame(head));
        }
        let filter = match &start.events {
            Some(Ok((set, _))) => Some(*set),
            _ => None,
        };
        let client = state.hub.register_local(
            principal.token_id,
            filter,
            Some(conn.tcp.clone()),
            transport,
        );
        let reg = Registered {
            state: state.clone(),
            client: client.clone(),
        };
        tracing::debug!(
            client = client.id,
            token_id = principal.token_id,
            "client connected"
        );
        let stop = conn.run(&client, start).await;
        drop(reg);
        // boxed: rare, and it would make every idle connection larger
        Box::pin(conn.finish(stop)).await;
        tracing::debug!(client = client.id, "client disconnected");
    }
}

/// The token's principal, or how to refuse the connection.
async fn authenticate(
    state: &AppState,
    token: Option<String>,
    ip: Option<&str>,
) -> Result<storage::tokens::Principal, Close> {
    let Some(token) = token else {
        return Err(Close::new(
            code::POLICY,
            protocol::NO_TOKEN,
            CloseKind::NoToken,
        ));
    };
    match state.auth.authenticate(&token, ip).await {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(Close::new(
            code::POLICY,
            protocol::INVALID_TOKEN,
            CloseKind::InvalidToken,
        )),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check a WebSocket token: the database is unavailable");
            Err(Close::new(
                code::AGAIN,
                "Try again later: the token cannot be checked now",
                CloseKind::AuthUnavailable,
            ))
        }
    }
}

struct Conn {
    state: Arc<AppState>,
    /// Shared with the client in the hub, for direct writes.
    tcp: Arc<TcpStream>,
    decoder: wire::Decoder,
    out: Outbox,
    feed: Option<Box<Feed>>,
}

enum Wake {
    Kill,
    Writable(io::Result<()>),
    Data,
    Feed(FeedItem),
    Readable(io::Result<()>),
    Timer,
}

impl Conn {
    async fn run(&mut self, client: &Arc<Client>, start: Start) -> Stop {
        if let Err(stop) = Box::pin(self.open(client, start)).await {
            return stop;
        }
        let settings = &self.state.settings;
        let sse = self.out.transport == Transport::Sse;
        // An SSE client cannot answer a ping: a dead one is found by the
        // write timeout and the socket's TCP_USER_TIMEOUT instead.
        let (ping_interval, pong_timeout, write_timeout) = (
            settings.ping_interval,
            if sse {
                SSE_SILENCE
            } else {
                settings.pong_timeout
            },
            settings.write_timeout,
        );
        // One timer for every deadline: the next ping, the moment the
        // client has been silent for `pong_timeout`, and a write that
        // made no progress for `write_timeout`.
        let mut last_seen = Instant::now();
        let mut last_progress = last_seen;
        let mut events_written = self.out.events_written;
        let mut next_ping = last_seen + ping_interval;
        let timer = tokio::time::sleep_until(next_ping.min(last_seen + pong_timeout));
        tokio::pin!(timer);
        loop {
            match self.flush_now() {
                Ok(true) => {
                    last_progress = Instant::now();
                    if self.out.events_written != events_written {
                        // While the queue is full the socket is not read
                        // (below), so pongs wait unseen; a client that takes
                        // events is alive all the same. Only events count: a
                        // frozen client whose kernel still takes a ping now
                        // and then times out, and one whose receive buffer
                        // fills hits `write_timeout`.
                        events_written = self.out.events_written;
                        last_seen = last_progress;
                    }
                }
                Ok(false) => {}
                Err(_) => return Stop::Gone,
            }
            if self.out.is_empty() {
                last_progress = Instant::now();
            }
            let room = self.out.bytes < OUT_HIGH;
            if !room && let Some(f) = self.feed.as_mut() {
                // the feed waits for the socket, not for the stream
                f.idle.as_mut().reset(Instant::now() + REPLAY_IDLE);
            }
            let parked = self.out.is_empty() && self.feed.is_none();
            if parked {
                client.begin_direct();
            }
            let wake = tokio::select! {
                biased;
                () = client.kill.notified() => Wake::Kill,
                r = self.tcp.writable(), if !self.out.is_empty() => Wake::Writable(r),
                () = client.wake.notified(), if self.out.is_empty() => Wake::Data,
                item = std::future::poll_fn(|cx| poll_feed(&mut self.feed, cx)), if room && self.feed.is_some() => Wake::Feed(item),
                r = self.tcp.readable(), if room => Wake::Readable(r),
                () = &mut timer => Wake::Timer,
            };
            if parked && let Some((frame, written)) = client.end_direct() {
                self.out.push(Out::Event(frame));
                self.out.offset = written;
            }
            let result = match wake {
                Wake::Kill => match client.signal() {
                    Signal::Close(c) => Err(Stop::Close(c)),
                    Signal::Lagged { since } => Box::pin(self.begin_catchup(client, since)).await,
                    Signal::Nothing => Ok(()),
                },
                Wake::Writable(r) => r.map_err(|_| Stop::Gone),
                Wake::Data => self.take_live(client),
                Wake::Feed(item) => self.on_feed(client, item),
                Wake::Readable(r) => match r {
                    Ok(()) => match Box::pin(self.on_readable(client)).await {
                        Ok(0) => Ok(()),
                        Ok(_) => {
                            last_seen = Instant::now();
                            Ok(())
                        }
                        Err(stop) => Err(stop),
                    },
                    Err(_) => Err(Stop::Gone),
                },
                Wake::Timer => {
                    let now = Instant::now();
                    if now >= last_seen + pong_timeout {
                        Err(Stop::Close(Close::new(
                            code::NORMAL,
                            format!(
                                "Ping timeout: nothing received for {}",
                                humantime::format_duration(pong_timeout)
                            ),
                            CloseKind::PingTimeout,
                        )))
                    } else if !self.out.is_empty() && now >= last_progress + write_timeout {
                        // The client stopped reading: nothing more can be
                        // written, not even a close frame.
                        self.state.metrics.closed(CloseKind::WriteTimeout);
                        return Stop::Gone;
                    } else {
                        if now >= next_ping {
                            next_ping = now + ping_interval;
                            self.out.push(Out::Frame(if sse {
                                Bytes::from_static(crate::sse::HEARTBEAT)
                            } else {
                                wire::frame(wire::OP_PING, b"")
                            }));
                        }
                        Ok(())
                    }
                }
            };
            let mut deadline = next_ping.min(last_seen + pong_timeout);
            if !self.out.is_empty() {
                deadline = deadline.min(last_progress + write_timeout);
            }
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if let Err(stop) = result {
                return stop;
            }
        }
    }

    /// Writes what the socket takes now; whether anything was written.
    fn flush_now(&mut self) -> io::Result<bool> {
        let mut progress = false;
        let mut budget = 4 * OUT_HIGH;
        while !self.out.is_empty() && budget > 0 {
            match self.out.write_to(&self.tcp) {
                Ok(n) => {
                    progress = true;
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(progress)
    }

    /// What a connection does first: the welcome message, the answer to
    /// `events=` and the replay of `since=`.
    async fn open(&mut self, client: &Arc<Client>, start: Start) -> Result<(), Stop> {
        match self.out.transport {
            Transport::WebSocket => self.out.message("connection", protocol::WELCOME),
            Transport::Sse => {
                self.out
                    .push(Out::Frame(Bytes::from_static(crate::sse::RETRY)));
                self.out.message("connection", protocol::SSE_WELCOME);
            }
        }
        match &start.events {
            Some(Ok((_, events))) => {
                self.reply("subscribed", &protocol::subscribed_message(events));
            }
            Some(Err(e)) => self.reply("error", &protocol::error_message(e)),
            None => {}
        }
        match start.since {
            Some(Ok(since)) => self.begin_resume(client, since, start.epoch).await,
            Some(Err(why)) => {
                if self.out.transport == Transport::Sse {
                    // The browser sends the same Last-Event-ID again on
                    // every reconnect: it must be told to start over.
                    let epoch = self.state.hub.epoch();
                    let first_seq = replay::first_seq(&self.state.js, &self.state.ns)
                        .await
                        .unwrap_or_default();
                    self.resync(client, 0, first_seq, &epoch, &why);
                } else {
                    self.reply("error", &protocol::error_message(&why));
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Queues one message (not an event) of this connection whose `type`
    /// is `kind`.
    fn reply(&mut self, kind: &str, json: &str) {
        self.state.metrics.messages_sent.inc();
        self.out.message(kind, json);
    }

    /// Queues one event.
    fn event(&mut self, frame: Arc<EventFrame>) {
        self.out.push(Out::Event(frame));
    }

    /// Moves the client's live events from the hub to the socket queue.
    fn take_live(&mut self, client: &Client) -> Result<(), Stop> {
        let mut frames = VecDeque::new();
        match client.take(&mut frames) {
            Take::Close(c) => return Err(Stop::Close(c)),
            Take::Nothing => return Ok(()),
            Take::Frames => {}
        }
        let now = SystemTime::now();
        self.state.metrics.messages_sent.inc_by(frames.len() as u64);
        for frame in frames {
            if let Some(published) = frame.published
                && let Ok(d) = now.duration_since(published)
            {
                self.state.metrics.event_to_send.observe(d.as_secs_f64());
            }
            self.event(frame);
        }
        Ok(())
    }

    /// Reads what the socket has and handles every complete message;
    /// how many bytes came in.
    async fn on_readable(&mut self, client: &Arc<Client>) -> Result<usize, Stop> {
        let buf = self.decoder.buffer();
        buf.reserve(READ_CHUNK);
        let read = self.tcp.try_read_buf(buf);
        let n = match read {
            Ok(0) => return Err(Stop::Gone),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(_) => return Err(Stop::Gone),
        };
        if self.out.transport == Transport::Sse {
            // nothing an SSE client sends after its request means anything
            self.decoder.buffer().clear();
            return Ok(n);
        }
        loop {
            let msg = match self.decoder.decode() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return Err(Stop::Fail(e)),
            };
            match msg {
                Inbound::Text(text) => self.on_text(client, &text).await?,
                Inbound::Binary(bytes) => match std::str::from_utf8(&bytes) {
                    Ok(text) => self.on_text(client, text).await?,
                    Err(_) => tracing::debug!("ignoring a binary message that is not UTF-8 JSON"),
                },
                Inbound::Ping(payload) => {
                    self.out
                        .push(Out::Frame(wire::frame(wire::OP_PONG, &payload)));
                }
                Inbound::Pong => {}
                Inbound::Close(code) => return Err(Stop::ClientClose(code)),
            }
        }
        self.decoder.release();
        Ok(n)
    }

    async fn on_text(&mut self, client: &Arc<Client>, text: &str) -> Result<(), Stop> {
        match protocol::parse_client(text) {
            ClientMessage::Ping => self.reply("pong", protocol::PONG),
            ClientMessage::Subscribe { set, events } => {
                client.set_filter(set);
                self.reply("subscribed", &protocol::subscribed_message(&events));
            }
            ClientMessage::Resume { since, epoch } => {
                return Box::pin(self.begin_resume(client, since, epoch)).await;
            }
            ClientMessage::Unknown(message) => {
                self.reply("error", &protocol::error_message(&message));
            }
            ClientMessage::Invalid => {
                tracing::debug!(client = client.id, "ignoring a message that is not JSON");
            }
        }
        Ok(())
    }

    fn resync(&mut self, client: &Client, since: u64, first_seq: u64, epoch: &str, why: &str) {
        self.state.metrics.resyncs.inc();
        client.resume_after(0);
        self.reply(
            "resync_required",
            &protocol::resync_message(since, first_seq, epoch, why),
        );
    }

    async fn begin_resume(
        &mut self,
        client: &Arc<Client>,
        since: u64,
        epoch: Option<String>,
    ) -> Result<(), Stop> {
        // A new resume replaces one in progress.
        self.feed = None;
        client.pause();
        let started = replay::start(
            &self.state.js,
            &self.state.ns,
            since,
            epoch.as_deref(),
            self.state.settings.max_replay,
        )
        .await;
        match started {
            Ok(replay::Start::UpToDate { epoch }) => {
                client.resume_after(since);
                self.reply(
                    "resumed",
                    &protocol::resumed_message(since, 0, since, &epoch),
                );
            }
            Ok(replay::Start::Resync {
                first_seq,
                epoch,
                message,
            }) => self.resync(client, since, first_seq, &epoch, &message),
            Ok(replay::Start::Replay {
                messages,
                first_seq,
                until,
                epoch,
            }) => {
                self.feed = Some(Box::new(Feed {
                    kind: FeedKind::Resume,
                    messages,
                    idle: Box::pin(tokio::time::sleep(REPLAY_IDLE)),
                    epoch,
                    first_seq,
                    since,
                    until,
                    sent: 0,
                }));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a replay");
                self.resync(
                    client,
                    since,
                    0,
                    "",
                    "stored events cannot be read now; reload",
                );
            }
        }
        Ok(())
    }

    /// The client's queue overflowed after `since`: feed it from the
    /// stream (or refuse, past the limits).
    async fn begin_catchup(&mut self, client: &Arc<Client>, since: u64) -> Result<(), Stop> {
        let state = self.state.clone();
        let Ok(permit) = state.catchups.clone().try_acquire_owned() else {
            return Err(Stop::Close(Close::slow(state.hub.limits())));
        };
        let epoch = state.hub.epoch();
        let limits = state.settings.catchup;
        let behind = state.hub.last_seq().saturating_sub(since);
        // 0 when the stream cannot be asked now (the resync says so anyway)
        let first_seq = replay::first_seq(&state.js, &state.ns)
            .await
            .unwrap_or_default();
        if behind > limits.max_events {
            self.resync(
                client,
                since,
                first_seq,
                &epoch,
                &format!(
                    "{behind} events behind, more than the catch-up limit of {}; reload",
                    limits.max_events
                ),
            );
            return Ok(());
        }
        match replay::open(&state.js, &state.ns, since + 1).await {
            Ok(messages) => {
                state.metrics.catchups_started.inc();
                state.metrics.catchup_clients.inc();
                tracing::debug!(client = client.id, since, behind, "client catching up");
                self.reply("catching_up", &protocol::catching_up_message(since, behind));
                self.feed = Some(Box::new(Feed {
                    kind: FeedKind::CatchUp {
                        _slot: CatchupSlot {
                            metrics: state.metrics.clone(),
                            _permit: permit,
                        },
                    },
                    messages,
                    idle: Box::pin(tokio::time::sleep(REPLAY_IDLE)),
                    epoch,
                    first_seq,
                    since,
                    until: 0,
                    sent: 0,
                }));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a catch-up");
                self.resync(
                    client,
                    since,
                    first_seq,
                    &epoch,
                    "stored events cannot be read now; reload",
                );
            }
        }
        Ok(())
    }

    fn on_feed(&mut self, client: &Client, item: FeedItem) -> Result<(), Stop> {
        let Some(f) = self.feed.as_mut() else {
            return Ok(());
        };
        let msg = match item {
            FeedItem::Message(m) => m,
            FeedItem::Failed(e) => {
                let (since, first_seq, epoch) = (f.since, f.first_seq, f.epoch.clone());
                self.feed = None;
                tracing::warn!(error = %e, "replay failed");
                self.resync(
                    client,
                    since,
                    first_seq,
                    &epoch,
                    "the replay was interrupted; reload",
                );
                return Ok(());
            }
        };
        let (seq, pending) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(_) => return Ok(()),
        };
        let frame = if seq > f.since {
            protocol::event_frame(&msg.payload, seq, &f.epoch)
                .map_err(|e| tracing::debug!(seq, error = %e, "replay skips an invalid message"))
                .ok()
        } else {
            None
        };
        let catching_up = matches!(f.kind, FeedKind::CatchUp { .. });
        if catching_up {
            let limits = self.state.settings.catchup;
            let behind = self.state.hub.last_seq().saturating_sub(seq);
            let age = frame
                .as_ref()
                .and_then(|fr| fr.published)
                .and_then(|p| SystemTime::now().duration_since(p).ok())
                .unwrap_or_default();
            let why = if behind > limits.max_events {
                Some(format!(
                    "{behind} events behind, more than the catch-up limit of {}; reload",
                    limits.max_events
                ))
            } else if age > limits.max_age {
                Some(format!(
                    "the next event is older than the catch-up limit of {}; reload",
                    humantime::format_duration(limits.max_age)
                ))
            } else {
                None
            };
            if let Some(why) = why {
                let (since, first_seq, epoch) = (f.since, f.first_seq, f.epoch.clone());
                self.feed = None;
                self.resync(client, since, first_seq, &epoch, &why);
                return Ok(());
            }
        }
        if let Some(frame) = frame
            && client.filter().matches(frame.event_type)
        {
            f.sent += 1;
            let metrics = &self.state.metrics;
            if catching_up {
                metrics.catchup_events.inc();
            } else {
                metrics.replayed.inc();
            }
            metrics.messages_sent.inc();
            self.event(Arc::new(frame));
        }
        let Some(f) = self.feed.as_mut() else {
            return Ok(());
        };
        if seq >= f.until || pending == 0 {
            let last = seq.max(f.until);
            if !client.try_hand_over(last) {
                // live events after `last` were dropped meanwhile: go on
                return Ok(());
            }
            let (since, sent, epoch) = (f.since, f.sent, f.epoch.clone());
            let (kind, text) = if catching_up {
                self.state.metrics.catchups_finished.inc();
                (
                    "caught_up",
                    protocol::caught_up_message(since, sent, last, &epoch),
                )
            } else {
                (
                    "resumed",
                    protocol::resumed_message(since, sent, last, &epoch),
                )
            };
            self.feed = None;
            self.reply(kind, &text);
        }
        Ok(())
    }

    /// Writes until the queue is empty or `deadline`; whether it emptied.
    async fn flush_until(&mut self, deadline: Instant) -> bool {
        loop {
            if self.flush_now().is_err() {
                return false;
            }
            if self.out.is_empty() {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.tcp.writable()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    /// Sends a last frame, then the FIN at once; then reads (and drops)
    /// what the client still sends until it closes its side, for at most
    /// [`LINGER`].
    async fn close_with(&mut self, last: Bytes) {
        self.feed = None;
        self.out.discard_unstarted();
        self.out.push(Out::Frame(last));
        if !self.flush_until(Instant::now() + CLOSE_TIMEOUT).await {
            return;
        }
        if socket2::SockRef::from(&*self.tcp)
            .shutdown(std::net::Shutdown::Write)
            .is_err()
        {
            return;
        }
        let deadline = Instant::now() + LINGER;
        // on the heap, and only now: a buffer here would make every idle
        // connection's future 4 KiB larger
        let mut sink = vec![0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.tcp.readable()).await {
                Ok(Ok(())) => match self.tcp.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                },
                _ => return,
            }
        }
    }

    /// Refuses a connection before it was accepted: a close frame after
    /// the WebSocket's `101`, an HTTP error instead of SSE's `200`.
    async fn refuse(mut self, close: Close) {
        match self.out.transport {
            Transport::WebSocket => self.finish(Stop::Close(close)).await,
            Transport::Sse => {
                self.state.metrics.closed(close.kind);
                let (status, extra) = crate::sse::refusal_status(close.kind);
                self.close_with(crate::sse::http_error(status, extra, &close.reason))
                    .await;
            }
        }
    }

    async fn finish(mut self, stop: Stop) {
        let metrics = self.state.metrics.clone();
        match stop {
            Stop::Close(c) => {
                metrics.closed(c.kind);
                let last = match self.out.transport {
                    Transport::WebSocket => wire::close_frame(c.code, &c.reason),
                    Transport::Sse => crate::sse::close_event(c.code, &c.reason),
                };
                self.close_with(last).await;
            }
            Stop::Fail(e) => {
                let (kind, reason) = match &e {
                    WireError::TooBig => (
                        CloseKind::FrameTooLarge,
                        format!(
                            "Message too big: the limit is {} bytes",
                            self.state.settings.max_frame_bytes
                        ),
                    ),
                    WireError::InvalidUtf8 => (
                        CloseKind::ProtocolError,
                        "Invalid data: text that is not UTF-8".to_owned(),
                    ),
                    WireError::Protocol(what) => {
                        (CloseKind::ProtocolError, format!("Protocol error: {what}"))
                    }
                };
                tracing::debug!(error = %e, "WebSocket protocol error");
                metrics.closed(kind);
                self.close_with(wire::close_frame(e.close_code(), &reason))
                    .await;
            }
            Stop::ClientClose(code) => {
                metrics.closed(CloseKind::ClientClosed);
                let echo = match code {
                    Some(code) => wire::frame(wire::OP_CLOSE, &code.to_be_bytes()),
                    None => wire::frame(wire::OP_CLOSE, b""),
                };
                self.close_with(echo).await;
            }
            Stop::Gone => metrics.closed(CloseKind::ClientClosed),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proto_events::EventType;

    use super::*;

    fn ev(seq: u64, len: usize) -> Arc<EventFrame> {
        Arc::new(EventFrame::new(
            seq,
            EventType::UserCreated,
            &"e".repeat(len),
            "",
            None,
        ))
    }

    #[test]
    fn outbox_accounting_and_partial_writes() {
        let mut o = Outbox::new(Transport::WebSocket);
        o.push(Out::Event(ev(1, 10)));
        o.push(Out::Event(ev(2, 200)));
        o.message("x", "hi");
        assert_eq!(o.bytes, (2 + 10) + (4 + 200) + (2 + 2));
        o.advance(5);
        assert_eq!(o.offset, 5);
        o.discard_unstarted();
        assert_eq!(o.items.len(), 1, "the started frame stays");
        assert_eq!(o.bytes, 12);
        o.advance(7);
        assert!(o.is_empty());
        assert_eq!((o.bytes, o.offset), (0, 0));
        o.push(Out::Event(ev(3, 1)));
        o.discard_unstarted();
        assert!(o.is_empty());
    }
}

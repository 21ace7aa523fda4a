//! The broadcast hub: every connected client, its filter and its bounded
//! outbound queue. The fan-out loop hands each event to [`Hub::dispatch`]
//! once; frames are shared (`Arc`), never copied per client.
//!
//! While a connection task is idle (nothing of its own to write, no
//! replay running) its client is *direct*: the shard task of its thread
//! writes live frames straight into the socket with one non-blocking
//! `send` (`sendmsg` for several), so a live event costs one wake-up per
//! thread, not one per client. Only when the socket does not take a whole frame does the rest
//! go to the client's queue and the connection task wake up to finish it
//! (and everything after it) at the socket's pace.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use proto_events::PatternSet;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::{CloseKind, Metrics};
use crate::protocol::{EventFrame, Transport};
use crate::wire::code;

/// Most frames in one direct write.
const DIRECT_MAX: usize = 16;
/// Clients whose memory is loaded ahead, together, before writing to them.
const PREFETCH: usize = 64;

/// Per-client outbound limits.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub messages: usize,
    pub bytes: usize,
}

/// Why and how the server closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
    pub kind: CloseKind,
}

impl Close {
    pub fn new(code: u16, reason: impl Into<String>, kind: CloseKind) -> Self {
        Self {
            code,
            reason: reason.into(),
            kind,
        }
    }

    pub fn slow(limits: QueueLimits) -> Self {
        Self::new(
            code::AGAIN,
            format!(
                "Client too slow: more than {} messages or {} bytes queued",
                limits.messages, limits.bytes
            ),
            CloseKind::SlowClient,
        )
    }

    pub fn revoked() -> Self {
        Self::new(
            code::POLICY,
            crate::protocol::INVALID_TOKEN,
            CloseKind::Revoked,
        )
    }

    pub fn shutdown() -> Self {
        Self::new(code::AWAY, "Server shutting down", CloseKind::Shutdown)
    }
}

/// Where a client's live events go while its connection catches up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Live events flow to the client.
    Live,
    /// A replay or catch-up from the stream runs: live events wait in the
    /// queue. Those up to `gap_until` were dropped (the queue overflowed),
    /// so the replay must reach it before live events can follow.
    Held { gap_until: u64 },
    /// The queue overflowed while live: held as above, and the connection
    /// is yet to be told to catch up from the stream after `since`.
    Lagged { since: u64, gap_until: u64 },
}

impl Phase {
    fn is_live(self) -> bool {
        self == Self::Live
    }

    fn gap_until(self) -> u64 {
        match self {
            Self::Live => 0,
            Self::Held { gap_until } | Self::Lagged { gap_until, .. } => gap_until,
        }
    }
}

/// `repr(C)`: the fields a live event reads for a direct client (`direct`,
/// `filter`, `min_seq`, `queue`) come first, so that with the mutex's lock
/// byte before them and the socket pointer before that they fill the one
/// cache line the shard loads ahead ([`Client`]'s layout).
#[repr(C)]
struct ClientState {
    /// The connection task is parked with nothing to write: the shard
    /// writes live frames into the socket itself. Never set while a close
    /// is pending, a replay runs or frames are queued.
    direct: bool,
    /// How the connection frames events (beside `direct`, in its padding).
    transport: Transport,
    filter: PatternSet,
    /// Live events at or below this sequence are not queued: a replay
    /// already sent them (the fan-out consumer may lag behind the replay).
    min_seq: u64,
    queue: VecDeque<Arc<EventFrame>>,
    bytes: usize,
    phase: Phase,
    close: Option<Close>,
    /// Bytes of the queue's front frame that a direct write already sent
    /// (the connection task finishes it before writing anything else).
    front_written: usize,
}

impl ClientState {
    fn new(filter: PatternSet, transport: Transport) -> Self {
        Self {
            direct: false,
            transport,
            filter,
            min_seq: 0,
            queue: VecDeque::new(),
            bytes: 0,
            phase: Phase::Live,
            close: None,
            front_written: 0,
        }
    }

    /// Empties the queue, except a frame a direct write left half sent.
    fn drop_queue(&mut self) {
        if self.front_written == 0 {
            self.queue = VecDeque::new();
            self.bytes = 0;
        } else {
            self.queue.truncate(1);
            self.bytes = self.queue.iter().map(|f| f.cost()).sum();
        }
    }
}

/// Live frames the shard wrote into sockets itself, for the metrics.
struct DirectSent<'a> {
    metrics: &'a Metrics,
    now: SystemTime,
    count: u64,
}

impl DirectSent<'_> {
    fn sent(&mut self, frame: &EventFrame) {
        self.count += 1;
        if let Some(published) = frame.published
            && let Ok(d) = self.now.duration_since(published)
        {
            self.metrics.event_to_send.observe(d.as_secs_f64());
        }
    }
}

/// One non-blocking write of whole frames, straight to the socket; bytes
/// written (0 when the socket is full or failed: the connection task meets
/// the error on its next write).
///
/// This is the one write per client per event of the fan-out, so it is
/// the leanest the kernel offers: `send(2)` of the prebuilt frame (or
/// `sendmsg(2)` of several), not `writev(2)` through the VFS, and not
/// through tokio's readiness cache (`try_write_vectored`). Measured at
/// 1,000 and 2,000 clients × 20/s it cut the gateway's CPU per message by
/// 16–29 % (BENCHMARKS.md, "A floor column, prebuilt frames, overlapped
/// cache misses"). A full socket
/// leaves tokio's cache saying "writable"; the connection task's first
/// write then meets `EAGAIN` and waits for the socket's next edge, so no
/// wake-up is lost.
fn write_frames(tcp: &TcpStream, frames: &[&Arc<EventFrame>], transport: Transport) -> usize {
    let socket = socket2::SockRef::from(tcp);
    let written = match frames {
        [one] => socket.send(one.bytes(transport)),
        many => {
            let mut iov = [IoSlice::new(&[]); DIRECT_MAX];
            for (slice, f) in iov.iter_mut().zip(many) {
                *slice = IoSlice::new(f.bytes(transport));
            }
            socket.send_vectored(&iov[..many.len().min(DIRECT_MAX)])
        }
    };
    written.unwrap_or(0)
}

/// One connected, authenticated client as the hub sees it.
///
/// `repr(C, align(64))`: the socket pointer, the state's lock byte and the
/// state's first fields (all a live event reads for a direct client) are
/// the first 64 bytes, on one cache line, so the shard's look-ahead load
/// of the lock byte brings in everything the write then reads. In
/// alternating runs at 2,000 clients × 20/s it took the gateway from a
/// median 1.17× the floor server's CPU per message to 1.02–1.04×
/// (BENCHMARKS.md, "At the kernel floor"), for 0.4 KiB more RSS per idle
/// connection (4.7 → 5.1 KiB at 10,000 clients).
#[repr(C, align(64))]
pub struct Client {
    /// The connection's socket, for direct writes (none in unit tests of
    /// the queue alone).
    socket: Option<Arc<TcpStream>>,
    state: Mutex<ClientState>,
    pub id: u64,
    pub token_id: i32,
    shard: Arc<Shard>,
    /// Woken when the queue goes from empty to non-empty.
    pub wake: Notify,
    /// Woken when the connection must close.
    pub kill: Notify,
}

/// Why the connection was woken on `kill`.
pub enum Signal {
    Close(Close),
    /// The queue overflowed; live events are held back until a catch-up
    /// from the stream after `since` hands over.
    Lagged {
        since: u64,
    },
    Nothing,
}

/// What the connection task takes from its queue.
pub enum Take {
    Close(Close),
    Frames,
    Nothing,
}

impl Client {
    /// Sends or queues the frames this client's filter selects, in order:
    /// straight into the socket while the client is direct, else into the
    /// queue. A queue that would pass a limit is dropped instead (the
    /// events are in the stream): a live client is told to catch up, a
    /// paused one (already replaying) notes how far its replay must now go.
    fn offer(&self, frames: &[Arc<EventFrame>], limits: QueueLimits, direct: &mut DirectSent) {
        let mut st = self.state.lock();
        // (a direct client has no close pending: `close` is a cold field)
        if !st.direct && st.close.is_some() {
            return;
        }
        let filter = st.filter;
        let selected =
            |f: &EventFrame, min_seq: u64| f.seq > min_seq && filter.matches(f.event_type);
        let was_empty = st.queue.is_empty();
        let mut rest = frames;
        let mut handed_over = false;
        if let Some(tcp) = self.socket.as_deref() {
            while st.direct && !rest.is_empty() {
                let mut picked = [&rest[0]; DIRECT_MAX];
                let (mut k, mut used) = (0, 0);
                for f in rest {
                    if k == DIRECT_MAX {
                        break;
                    }
                    used += 1;
                    if selected(f, st.min_seq) {
                        picked[k] = f;
                        k += 1;
                    }
                }
                rest = &rest[used..];
                if k == 0 {
                    continue;
                }
                let mut left = write_frames(tcp, &picked[..k], st.transport);
                for f in &picked[..k] {
                    let len = f.bytes(st.transport).len();
                    if st.queue.is_empty() && left >= len {
                        left -= len;
                        direct.sent(f);
                        continue;
                    }
                    if st.queue.is_empty() {
                        st.front_written = left;
                        left = 0;
                    }
                    st.queue.push_back((*f).clone());
                    st.bytes += f.cost();
                }
                if !st.queue.is_empty() {
                    // the socket is full: the connection task takes over
                    st.direct = false;
                    handed_over = true;
                }
            }
        }
        for frame in rest {
            if !selected(frame, st.min_seq) {
                continue;
            }
            if st.queue.len() >= limits.messages || st.bytes + frame.cost() > limits.bytes {
                let unsent = usize::from(st.front_written > 0);
                let first = st.queue.get(unsent).map_or(frame.seq, |f| f.seq);
                let last = frames.last().map_or(frame.seq, |f| f.seq);
                st.drop_queue();
                let signal = st.phase.is_live();
                st.phase = match st.phase {
                    Phase::Live => Phase::Lagged {
                        since: first.saturating_sub(1),
                        gap_until: last,
                    },
                    Phase::Held { gap_until } => Phase::Held {
                        gap_until: gap_until.max(last),
                    },
                    Phase::Lagged { since, gap_until } => Phase::Lagged {
                        since,
                        gap_until: gap_until.max(last),
                    },
                };
                drop(st);
                if signal {
                    self.kill.notify_one();
                }
                if handed_over {
                    self.wake.notify_one();
                }
                return;
            }
            st.queue.push_back(frame.clone());
            st.bytes += frame.cost();
        }
        let notify = handed_over || (was_empty && !st.queue.is_empty() && st.phase.is_live());
        drop(st);
        if notify {
            self.wake.notify_one();
        }
    }

    /// The connection task parks with nothing to write: live frames may
    /// go straight into the socket (unless a replay runs, a close is
    /// pending or frames are queued).
    pub fn begin_direct(&self) {
        let mut st = self.state.lock();
        st.direct = self.socket.is_some()
            && st.phase.is_live()
            && st.close.is_none()
            && st.queue.is_empty();
    }

    /// The connection task woke up and writes again itself: no more
    /// direct writes, and a frame one left half sent is handed back (with
    /// the bytes already sent) to be finished before anything else.
    pub fn end_direct(&self) -> Option<(Arc<EventFrame>, usize)> {
        let mut st = self.state.lock();
        st.direct = false;
        if st.front_written == 0 {
            return None;
        }
        let written = std::mem::take(&mut st.front_written);
        let frame = st.queue.pop_front()?;
        st.bytes -= frame.cost();
        Some((frame, written))
    }

    /// Asks the connection to close (first reason wins).
    pub fn close(&self, close: Close) {
        let mut st = self.state.lock();
        if st.close.is_none() {
            st.close = Some(close);
            st.direct = false;
            st.drop_queue();
        }
        drop(st);
        self.kill.notify_one();
    }

    /// The pending close, if any.
    pub fn take_close(&self) -> Option<Close> {
        self.state.lock().close.take()
    }

    /// What the `kill` notification was about: a close, or a queue that
    /// overflowed (catch up after this sequence).
    pub fn signal(&self) -> Signal {
        let mut st = self.state.lock();
        if let Some(c) = st.close.take() {
            return Signal::Close(c);
        }
        match st.phase {
            Phase::Lagged { since, gap_until } => {
                st.phase = Phase::Held { gap_until };
                Signal::Lagged { since }
            }
            Phase::Live | Phase::Held { .. } => Signal::Nothing,
        }
    }

    /// Moves queued frames into `out` (which must be empty), unless the
    /// queue is paused for a replay or a close is pending.
    pub fn take(&self, out: &mut VecDeque<Arc<EventFrame>>) -> Take {
        let mut st = self.state.lock();
        if let Some(c) = st.close.take() {
            return Take::Close(c);
        }
        if !st.phase.is_live() || st.queue.is_empty() {
            return Take::Nothing;
        }
        std::mem::swap(&mut st.queue, out);
        st.bytes = 0;
        Take::Frames
    }

    /// Replaces the filter.
    pub fn set_filter(&self, filter: PatternSet) {
        self.state.lock().filter = filter;
    }

    /// The current filter.
    pub fn filter(&self) -> PatternSet {
        self.state.lock().filter
    }

    /// Holds live events back while a replay runs.
    pub fn pause(&self) {
        let mut st = self.state.lock();
        if st.phase.is_live() {
            st.phase = Phase::Held { gap_until: 0 };
        }
    }

    /// Ends a replay that reached `pos` if nothing held back after it was
    /// dropped: drops held-back events the replay covered, lets the rest
    /// flow and returns true. False: the replay must go on.
    pub fn try_hand_over(&self, pos: u64) -> bool {
        if self.state.lock().phase.gap_until() > pos {
            return false;
        }
        self.resume_after(pos);
        true
    }

    /// Ends a replay: drops held-back live events the replay already
    /// covered (`seq <= last_replayed`), then lets the rest flow (a gap
    /// left by an overflow is forgotten: the caller told the client).
    pub fn resume_after(&self, last_replayed: u64) {
        let mut st = self.state.lock();
        st.phase = Phase::Live;
        st.queue.retain(|f| f.seq > last_replayed);
        st.bytes = st.queue.iter().map(|f| f.cost()).sum();
        st.min_seq = st.min_seq.max(last_replayed);
        let notify = !st.queue.is_empty();
        drop(st);
        if notify {
            self.wake.notify_one();
        }
    }
}

/// The clients of one HTTP worker thread. Events reach a shard with one
/// cross-thread wake per event batch; the shard's task (on that thread)
/// then hands them to its clients, so waking a client never crosses
/// threads.
pub struct Shard {
    clients: Mutex<HashMap<u64, Arc<Client>>>,
    inbox: Mutex<Vec<Arc<EventFrame>>>,
    wake: Notify,
}

impl Shard {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            clients: Mutex::new(HashMap::new()),
            inbox: Mutex::new(Vec::new()),
            wake: Notify::new(),
        })
    }

    fn offer_all(&self, frames: &[Arc<EventFrame>], limits: QueueLimits, metrics: &Metrics) {
        let mut direct = DirectSent {
            metrics,
            now: SystemTime::now(),
            count: 0,
        };
        let clients = self.clients.lock();
        let mut rest = clients.values();
        loop {
            let mut chunk = [None; PREFETCH];
            for slot in &mut chunk {
                *slot = rest.next();
            }
            if chunk[0].is_none() {
                break;
            }
            // Between two events the kernel's socket work pushes each
            // client's memory out of the cache, so every `offer` would start
            // with a miss on the client and one on its socket, one after
            // the other (the lock's atomic waits for each). Plain loads of
            // both for a few clients first let those misses overlap: 11 %
            // less CPU per message at 2,000 clients × 20/s with 16 clients
            // at a time, 2–8 % less again with 64 (BENCHMARKS.md, the A/B
            // rows of "A floor column, prebuilt frames, …").
            let mut touched = 0u64;
            for c in chunk.iter().flatten() {
                touched ^= u64::from(c.state.is_locked());
                if let Some(tcp) = &c.socket {
                    touched ^= u64::from(tcp.as_fd().as_raw_fd().unsigned_abs());
                }
            }
            std::hint::black_box(touched);
            for c in chunk.iter().flatten() {
                c.offer(frames, limits, &mut direct);
            }
        }
        metrics.messages_sent.inc_by(direct.count);
    }

    /// The shard's task: hands frames to its clients; it ends with its
    /// worker thread.
    async fn run(self: Arc<Self>, limits: QueueLimits, metrics: Metrics) {
        let mut batch = Vec::new();
        loop {
            self.wake.notified().await;
            std::mem::swap(&mut *self.inbox.lock(), &mut batch);
            self.offer_all(&batch, limits, &metrics);
            batch.clear();
        }
    }
}

static HUB_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's shard of each hub (keyed by hub id).
    static LOCAL_SHARDS: std::cell::RefCell<Vec<(u64, Arc<Shard>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Every client of this gateway process.
pub struct Hub {
    id: u64,
    clients: RwLock<HashMap<u64, Arc<Client>>>,
    shards: RwLock<Vec<Arc<Shard>>>,
    next_id: AtomicU64,
    limits: QueueLimits,
    metrics: Metrics,
    last_seq: AtomicU64,
    /// The epoch of the stream being fanned out (empty: not known yet).
    epoch: RwLock<Arc<str>>,
    live: AtomicBool,
    closing: AtomicBool,
    /// Woken after every dispatched event (long-polls wait on it).
    dispatched: Notify,
}

impl Hub {
    pub fn new(limits: QueueLimits, metrics: Metrics) -> Self {
        Self {
            id: HUB_IDS.fetch_add(1, Ordering::Relaxed),
            clients: RwLock::new(HashMap::new()),
            shards: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            limits,
            metrics,
            last_seq: AtomicU64::new(0),
            epoch: RwLock::new(Arc::from("")),
            live: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            dispatched: Notify::new(),
        }
    }

    /// Completes after the next dispatched event. Create it (and `enable`
    /// it) before checking [`Hub::last_seq`] so that no event slips
    /// between the check and the wait.
    pub fn next_dispatch(&self) -> tokio::sync::futures::Notified<'_> {
        self.dispatched.notified()
    }

    /// Adds a client to this thread's shard, starting the shard's task on
    /// first use. Must run inside a `LocalSet` (an HTTP worker thread), the
    /// thread whose reactor `socket` is registered with.
    pub fn register_local(
        &self,
        token_id: i32,
        filter: Option<PatternSet>,
        socket: Option<Arc<TcpStream>>,
        transport: Transport,
    ) -> Arc<Client> {
        let shard = LOCAL_SHARDS.with(|cell| {
            let mut shards = cell.borrow_mut();
            if let Some((_, shard)) = shards.iter().find(|(id, _)| *id == self.id) {
                return shard.clone();
            }
            let shard = Shard::new();
            tokio::task::spawn_local(shard.clone().run(self.limits, self.metrics.clone()));
            self.shards.write().push(shard.clone());
            shards.push((self.id, shard.clone()));
            shard
        });
        let client = Arc::new(Client {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            token_id,
            shard: shard.clone(),
            socket,
            state: Mutex::new(ClientState::new(
                filter.unwrap_or(PatternSet::all()),
                transport,
            )),
            wake: Notify::new(),
            kill: Notify::new(),
        });
        self.clients.write().insert(client.id, client.clone());
        shard.clients.lock().insert(client.id, client.clone());
        if self.closing.load(Ordering::SeqCst) {
            client.close(Close::shutdown());
        }
        client
    }

    pub fn unregister(&self, client: &Client) {
        self.clients.write().remove(&client.id);
        client.shard.clients.lock().remove(&client.id);
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.clients.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands one event to every client whose filter selects it (through
    /// the shards of the worker threads).
    pub fn dispatch(&self, frame: EventFrame) {
        let seq = frame.seq;
        let frame = Arc::new(frame);
        for shard in self.shards.read().iter() {
            let mut inbox = shard.inbox.lock();
            let was_empty = inbox.is_empty();
            inbox.push(frame.clone());
            drop(inbox);
            if was_empty {
                shard.wake.notify_one();
            }
        }
        self.last_seq.fetch_max(seq, Ordering::SeqCst);
        self.dispatched.notify_waiters();
        self.metrics.events_received.inc();
    }

    /// The highest stream sequence dispatched so far (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::SeqCst)
    }

    /// The epoch of the stream being fanned out (empty before the first
    /// consumer started).
    pub fn epoch(&self) -> Arc<str> {
        self.epoch.read().clone()
    }

    /// Records the epoch of the stream the fan-out consumer reads; whether
    /// it is a different stream than before.
    pub fn set_epoch(&self, epoch: Arc<str>) -> bool {
        let mut e = self.epoch.write();
        if **e == *epoch {
            return false;
        }
        *e = epoch;
        true
    }

    /// Starts over on a new stream whose last event is `last_seq`:
    /// sequences of the old stream mean nothing there.
    pub fn restart_at(&self, last_seq: u64) {
        self.last_seq.store(last_seq, Ordering::SeqCst);
        for c in self.clients.read().values() {
            c.state.lock().min_seq = 0;
        }
    }

    /// Records a sequence that was skipped (not a valid envelope).
    pub fn skip(&self, seq: u64) {
        self.last_seq.fetch_max(seq, Ordering::SeqCst);
    }

    /// Whether the JetStream consumer is delivering.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
    }

    /// The distinct token ids of connected clients.
    pub fn token_ids(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.clients.read().values().map(|c| c.token_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Closes every client whose token is not in `usable` (sorted or not).
    pub fn close_revoked(&self, usable: &[i32]) -> usize {
        let usable: std::collections::HashSet<i32> = usable.iter().copied().collect();
        let mut n = 0;
        for c in self.clients.read().values() {
            if !usable.contains(&c.token_id) {
                c.close(Close::revoked());
                n += 1;
            }
        }
        n
    }

    /// Starts shutdown: every client, present and future, closes with 1001.
    pub fn close_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for c in self.clients.read().values() {
            c.close(Close::shutdown());
        }
    }

    pub fn limits(&self) -> QueueLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proto_events::EventType;

    use super::*;
    use crate::wire;

    fn frame(seq: u64, t: EventType, len: usize) -> EventFrame {
        EventFrame::new(seq, t, &"x".repeat(len), "", None)
    }

    fn hub(messages: usize, bytes: usize) -> Hub {
        Hub::new(QueueLimits { messages, bytes }, Metrics::new())
    }

    /// Runs `f` on a worker-like thread (a `LocalSet`), as the gateway's
    /// connections run.
    fn on_worker<F: std::future::Future<Output = ()>>(f: F) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f);
    }

    /// Lets the shard task hand out what was dispatched.
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    fn seqs(out: &VecDeque<Arc<EventFrame>>) -> Vec<u64> {
        out.iter().map(|f| f.seq).collect()
    }

    /// What `Client`'s layout comment promises: the socket pointer, the
    /// state's lock byte and its fields up to the queue are the first 64
    /// bytes of a client that starts on a cache line.
    #[test]
    fn a_live_event_reads_one_cache_line_of_a_client() {
        on_worker(async {
            let h = hub(10, 1000);
            let c = h.register_local(1, None, None, Transport::WebSocket);
            let base = std::ptr::from_ref::<Client>(&c).addr();
            assert_eq!(base % 64, 0);
            assert_eq!(std::mem::offset_of!(Client, socket), 0);
            let lock = std::mem::offset_of!(Client, state);
            let data = c.state.data_ptr().addr() - base;
            assert!(lock < data, "the lock byte comes before the state");
            let hot_end = data
                + std::mem::offset_of!(ClientState, queue)
                + std::mem::size_of::<VecDeque<Arc<EventFrame>>>();
            assert!(hot_end <= 64, "the hot fields end at byte {hot_end}");
        });
    }

    #[test]
    fn filters_and_queues() {
        on_worker(async {
            let h = hub(10, 1000);
            let a = h.register_local(1, None, None, Transport::WebSocket);
            let b = h.register_local(2, None, None, Transport::WebSocket);
            b.set_filter(PatternSet::parse(["ticket.*"]).unwrap());
            h.dispatch(frame(1, EventType::UserCreated, 10));
            h.dispatch(frame(2, EventType::TicketCreated, 10));
            settle().await;
            let mut out = VecDeque::new();
            assert!(matches!(a.take(&mut out), Take::Frames));
            assert_eq!(seqs(&out), vec![1, 2]);
            out.clear();
            assert!(matches!(b.take(&mut out), Take::Frames));
            assert_eq!(seqs(&out), vec![2]);
            assert_eq!(h.last_seq(), 2);
            assert_eq!(h.token_ids(), vec![1, 2]);
            h.unregister(&a);
            assert_eq!(h.len(), 1);
        });
    }

    #[test]
    fn an_overflow_asks_for_a_catch_up_instead_of_a_close() {
        on_worker(async {
            let h = hub(3, 1000);
            let a = h.register_local(1, None, None, Transport::WebSocket);
            let mut out = VecDeque::new();
            h.dispatch(frame(1, EventType::UserCreated, 10));
            settle().await;
            assert!(matches!(a.take(&mut out), Take::Frames));
            for seq in 2..=6 {
                h.dispatch(frame(seq, EventType::UserCreated, 10));
            }
            settle().await;
            // 2, 3, 4 were queued, 5 overflowed: the queue is dropped (with
            // the rest of that batch) and the client must catch up after 1
            assert!(matches!(a.signal(), Signal::Lagged { since: 1 }));
            out.clear();
            assert!(matches!(a.take(&mut out), Take::Nothing), "held back");
            // the catch-up must reach 6, the last event dropped
            assert!(!a.try_hand_over(5));
            assert!(a.try_hand_over(6));
            assert!(matches!(a.take(&mut out), Take::Nothing));
            h.dispatch(frame(7, EventType::UserCreated, 10));
            settle().await;
            assert!(matches!(a.take(&mut out), Take::Frames));
            assert_eq!(seqs(&out), vec![7]);
            // byte limit
            let h = hub(100, 25);
            let b = h.register_local(1, None, None, Transport::WebSocket);
            h.dispatch(frame(1, EventType::UserCreated, 10));
            h.dispatch(frame(2, EventType::UserCreated, 10));
            settle().await;
            assert!(matches!(b.signal(), Signal::Nothing));
            h.dispatch(frame(3, EventType::UserCreated, 10));
            settle().await;
            assert!(matches!(b.signal(), Signal::Lagged { since: 0 }));
        });
    }

    #[test]
    fn an_overflow_during_a_replay_extends_it() {
        on_worker(async {
            let h = hub(2, 1000);
            let a = h.register_local(1, None, None, Transport::WebSocket);
            a.pause();
            for seq in 10..=14 {
                h.dispatch(frame(seq, EventType::UserCreated, 10));
            }
            settle().await;
            // no new signal: the replay running goes on until past 14
            assert!(matches!(a.signal(), Signal::Nothing));
            assert!(!a.try_hand_over(13));
            assert!(a.try_hand_over(14));
            h.dispatch(frame(15, EventType::UserCreated, 10));
            settle().await;
            let mut out = VecDeque::new();
            assert!(matches!(a.take(&mut out), Take::Frames));
            assert_eq!(seqs(&out), vec![15]);
        });
    }

    #[test]
    fn pause_and_hand_over_drops_what_the_replay_covered() {
        on_worker(async {
            let h = hub(100, 10_000);
            let a = h.register_local(1, None, None, Transport::WebSocket);
            a.pause();
            for seq in 5..=9 {
                h.dispatch(frame(seq, EventType::UserCreated, 10));
            }
            settle().await;
            let mut out = VecDeque::new();
            assert!(matches!(a.take(&mut out), Take::Nothing));
            a.resume_after(7);
            assert!(matches!(a.take(&mut out), Take::Frames));
            assert_eq!(seqs(&out), vec![8, 9]);
            // a lagging fan-out consumer delivering what the replay covered
            out.clear();
            h.dispatch(frame(6, EventType::UserCreated, 10));
            settle().await;
            assert!(matches!(a.take(&mut out), Take::Nothing));
        });
    }

    #[test]
    fn revoked_and_shutdown() {
        on_worker(async {
            let h = hub(10, 1000);
            let a = h.register_local(1, None, None, Transport::WebSocket);
            let b = h.register_local(2, None, None, Transport::WebSocket);
            assert_eq!(h.close_revoked(&[2]), 1);
            assert_eq!(a.take_close().unwrap().kind, CloseKind::Revoked);
            assert!(b.take_close().is_none());
            h.close_all();
            assert_eq!(b.take_close().unwrap().code, 1001);
            let c = h.register_local(3, None, None, Transport::WebSocket);
            assert_eq!(c.take_close().unwrap().kind, CloseKind::Shutdown);
        });
    }

    /// A loopback connection: the server side for the hub, the client side
    /// to read what was written.
    async fn socket_pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, peer) = tokio::join!(listener.accept(), peer);
        let server = accepted.unwrap().0;
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        (Arc::new(server), peer.unwrap())
    }

    fn wire_bytes(frames: &[EventFrame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            let (h, n) = wire::header(wire::OP_TEXT, f.json().len());
            out.extend_from_slice(&h[..n]);
            out.extend_from_slice(f.json());
        }
        out
    }

    fn drain(peer: &TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = peer.try_read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn a_direct_client_gets_frames_without_its_task_and_a_full_socket_hands_back() {
        on_worker(async {
            let h = hub(10_000, 100_000_000);
            let (server, peer) = socket_pair().await;
            let a = h.register_local(1, None, Some(server.clone()), Transport::WebSocket);
            a.begin_direct();
            let small: Vec<EventFrame> = (1..=3)
                .map(|seq| frame(seq, EventType::UserCreated, 100))
                .collect();
            for f in small.clone() {
                h.dispatch(f);
            }
            settle().await;
            peer.readable().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert_eq!(drain(&peer), wire_bytes(&small), "written by the shard");
            let mut out = VecDeque::new();
            assert!(matches!(a.take(&mut out), Take::Nothing), "nothing queued");

            // Far more than the socket buffers hold, without reading: the
            // shard writes what fits, then queues the rest and hands over.
            let big: Vec<EventFrame> = (4..=400)
                .map(|seq| frame(seq, EventType::UserCreated, 3000))
                .collect();
            for f in big.clone() {
                h.dispatch(f);
            }
            settle().await;
            let mut got = drain(&peer);
            // a frame left half sent
            let (partial, written) = a.end_direct().unwrap();
            let rest = wire_bytes(std::slice::from_ref(&*partial));
            assert!(written > 0 && written < rest.len());
            assert!(matches!(a.take(&mut out), Take::Frames));
            assert_eq!(out.front().unwrap().seq, partial.seq + 1);
            // What the peer read, then the unsent part of the half-sent
            // frame, then the queue, is exactly the stream of frames.
            while got.len() < wire_bytes(&big[..(partial.seq - 4) as usize]).len() + written {
                peer.readable().await.unwrap();
                got.extend(drain(&peer));
            }
            got.extend_from_slice(&rest[written..]);
            let queued: Vec<EventFrame> = out.iter().map(|f| (**f).clone()).collect();
            got.extend(wire_bytes(&queued));
            assert_eq!(got, wire_bytes(&big));
            // no direct writes until the task parks again
            h.dispatch(frame(401, EventType::UserCreated, 10));
            settle().await;
            out.clear();
            assert!(matches!(a.take(&mut out), Take::Frames));
            assert_eq!(seqs(&out), vec![401]);
        });
    }
}

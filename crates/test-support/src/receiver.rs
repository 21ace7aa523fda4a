//! A local HTTP/1.1 webhook receiver.
//!
//! One small server on tokio and `httparse`, not `wiremock` or a framework:
//! tests look at requests exactly as they came off the wire (header names
//! in their spelling and order, repeats included), count accepted
//! connections, and leave requests hanging; and `bench delivery`
//! pushes ~10,000 POST/s through the same code on two cores, so the request
//! path allocates nothing of its own (keep-alive, one parse of the head,
//! the handler sees borrowed bytes, one write for the answer).
//!
//! Bodies come with `Content-Length` (what reqwest sends for a byte body);
//! `Transfer-Encoding` is answered 501. Dropping the [`Receiver`] closes
//! the listener and every connection.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// Header lines one request may have.
const MAX_HEADERS: usize = 64;
/// Bytes one request head may take.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes one request body may take.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How long [`Receiver::next`] waits for a request.
const NEXT_WAIT: Duration = Duration::from_secs(10);

/// A request as the handler of [`Receiver::start_lean`] sees it, borrowed
/// from the connection's buffer.
pub struct Request<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a [httparse::Header<'a>],
    body: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The request target as sent: the path with its query.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The first header `name` (any case), when it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    }

    /// Every header as sent: name (case kept) and raw value, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let headers = self.headers;
        headers.iter().map(|h| (h.name, h.value))
    }

    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

/// One request a recording [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The request target as sent: the path with its query.
    pub path: String,
    /// Header names as sent on the wire (case kept), in order, repeats
    /// included.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the whole request had arrived.
    pub at: Instant,
    /// The status it was answered with; `None` when left hanging.
    pub status: Option<u16>,
}

impl Received {
    fn of(req: &Request<'_>) -> Self {
        Self {
            method: req.method.to_owned(),
            path: req.path.to_owned(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value);
                    (h.name.to_owned(), value.trim().to_owned())
                })
                .collect(),
            body: req.body.to_vec(),
            at: Instant::now(),
            status: None,
        }
    }

    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many times header `name` (any case) was sent.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// What the receiver does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answers after `delay` (the request is recorded on arrival).
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        delay: Duration,
    },
    /// Reads the request, then never answers (until the receiver is
    /// dropped).
    Hang,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply::Respond {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn ok() -> Self {
        Self::status(200)
    }

    pub fn with_body(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Reply::Respond {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn with_header(status: u16, name: &str, value: &str) -> Self {
        Reply::Respond {
            status,
            headers: vec![(name.to_owned(), value.to_owned())],
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// `status` after `delay`.
    pub fn slow(status: u16, delay: Duration) -> Self {
        Reply::Respond {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay,
        }
    }

    fn status_code(&self) -> Option<u16> {
        match self {
            Reply::Respond { status, .. } => Some(*status),
            Reply::Hang => None,
        }
    }
}

type Handler = dyn Fn(&Request<'_>) -> Reply + Send + Sync;

fn handler(f: impl Fn(&Request<'_>) -> Reply + Send + Sync + 'static) -> Box<Handler> {
    Box::new(f)
}

struct Server {
    handler: Box<Handler>,
    connections: AtomicUsize,
    requests: AtomicUsize,
}

#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Notify,
}

#[derive(Default)]
struct LogState {
    all: Vec<Received>,
    per_path: HashMap<String, usize>,
}

/// A running receiver on a local socket; stopped when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    server: Arc<Server>,
    /// `None` for a lean receiver, which keeps no record.
    log: Option<Arc<Log>>,
    /// Requests [`Receiver::next`] has handed out.
    taken: usize,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks: they go with it.
        self.task.abort();
    }
}

impl Receiver {
    /// Records every request on 127.0.0.1 (a free port) and answers each
    /// with `reply`.
    pub async fn start(reply: Reply) -> Receiver {
        Self::start_with(move |_, _| reply.clone()).await
    }

    /// Like [`Receiver::start`] on `bind` (e.g. `"[::1]:0"`).
    pub async fn start_on(bind: &str, reply: Reply) -> std::io::Result<Receiver> {
        Self::recording(bind, move |_, _| reply.clone()).await
    }

    /// Records every request on 127.0.0.1 and answers what `reply` says
    /// for it, given how many requests came to the same path before.
    pub async fn start_with(
        reply: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        match Self::recording("127.0.0.1:0", reply).await {
            Ok(r) => r,
            Err(e) => panic!("cannot start a receiver on 127.0.0.1: {e}"),
        }
    }

    /// Records every request on 127.0.0.1 and answers each with the next
    /// status of `statuses`, 200 once they are used up.
    pub async fn start_scripted(statuses: Vec<u16>) -> Receiver {
        let next = AtomicUsize::new(0);
        Self::start_with(move |_, _| {
            let i = next.fetch_add(1, Ordering::SeqCst);
            Reply::status(statuses.get(i).copied().unwrap_or(200))
        })
        .await
    }

    /// Keeps no record: `handle` sees each request where it lies in the
    /// connection's buffer and says what to answer (for a benchmark).
    pub async fn start_lean(
        bind: &str,
        handle: impl Fn(&Request<'_>) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<Receiver> {
        Self::spawn(bind, handler(handle), None).await
    }

    async fn recording(
        bind: &str,
        reply: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<Receiver> {
        let log = Arc::new(Log::default());
        let record = log.clone();
        let handle = handler(move |req| {
            let mut got = Received::of(req);
            let mut state = record.state.lock();
            let earlier = state.per_path.entry(got.path.clone()).or_default();
            let answer = reply(&got, *earlier);
            *earlier += 1;
            got.status = answer.status_code();
            state.all.push(got);
            drop(state);
            record.changed.notify_waiters();
            answer
        });
        Self::spawn(bind, handle, Some(log)).await
    }

    async fn spawn(
        bind: &str,
        handler: Box<Handler>,
        log: Option<Arc<Log>>,
    ) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let server = Arc::new(Server {
            handler,
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept(listener, server.clone()));
        Ok(Receiver {
            addr,
            server,
            log,
            taken: 0,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://<addr><path>` (an IPv6 address in brackets).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.connections.load(Ordering::SeqCst)
    }

    /// Requests so far.
    pub fn count(&self) -> usize {
        match &self.log {
            Some(log) => log.state.lock().all.len(),
            None => self.server.requests.load(Ordering::SeqCst),
        }
    }

    fn log(&self) -> &Log {
        match &self.log {
            Some(log) => log,
            None => panic!("a lean receiver keeps no record of requests"),
        }
    }

    /// Every request so far, in the order they arrived.
    pub fn received(&self) -> Vec<Received> {
        self.log().state.lock().all.clone()
    }

    /// The requests so far to `path` (path and query, as sent).
    pub fn on(&self, path: &str) -> Vec<Received> {
        on_path(&self.log().state.lock().all, path)
    }

    /// The next request not handed out before (waits up to 10 s).
    pub async fn next(&mut self) -> Received {
        let i = self.taken;
        match self.wait_until(NEXT_WAIT, |all| all.get(i).cloned()).await {
            Some(got) => {
                self.taken += 1;
                got
            }
            None => panic!("no request within {NEXT_WAIT:?}"),
        }
    }

    /// After `wait`: true when no connection was ever accepted and no
    /// request is left for [`Receiver::next`].
    pub async fn untouched_after(&mut self, wait: Duration) -> bool {
        tokio::time::sleep(wait).await;
        self.connections() == 0 && self.count() <= self.taken
    }

    /// Waits until at least `n` requests arrived; all of them.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let got = self
            .wait_until(within, |all| (all.len() >= n).then(|| all.to_vec()))
            .await;
        got.unwrap_or_else(|| {
            panic!(
                "the receiver got {} requests, not {n}, within {within:?}",
                self.count()
            )
        })
    }

    /// Waits until at least `n` requests arrived on `path`; those.
    pub async fn wait_for_path(&self, path: &str, n: usize, within: Duration) -> Vec<Received> {
        let got = self
            .wait_until(within, |all| {
                let k = all.iter().filter(|r| r.path == path).count();
                (k >= n).then(|| on_path(all, path))
            })
            .await;
        got.unwrap_or_else(|| {
            panic!(
                "{path}: {} of {n} requests within {within:?}",
                self.on(path).len()
            )
        })
    }

    async fn wait_until<T>(
        &self,
        within: Duration,
        mut check: impl FnMut(&[Received]) -> Option<T>,
    ) -> Option<T> {
        let log = self.log();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = log.changed.notified();
            if let Some(v) = check(&log.state.lock().all) {
                return Some(v);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), changed).await;
        }
    }
}

fn on_path(all: &[Received], path: &str) -> Vec<Received> {
    all.iter().filter(|r| r.path == path).cloned().collect()
}

async fn accept(listener: TcpListener, server: Arc<Server>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    server.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_nodelay(true);
                    let server = server.clone();
                    connections.spawn(async move {
                        let _ = serve(stream, &server).await;
                    });
                }
                // Out of file descriptors or the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// How a request's body is framed and whether the connection ends after
/// it; an error status for what this server does not take.
fn framing(req: &httparse::Request<'_, '_>) -> Result<(usize, bool), u16> {
    let mut len = 0;
    // HTTP/1.0 closes unless asked to keep alive; HTTP/1.1 the other way.
    let http10 = req.version == Some(0);
    let mut close = http10;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(400u16)?;
            if len > MAX_BODY {
                return Err(413);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(501);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    Ok((len, close))
}

/// One connection: requests one after another (pipelined ones too).
async fn serve(mut stream: TcpStream, server: &Server) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    loop {
        // The head, then how the body is framed.
        let (head_len, body_len, close) = loop {
            if !buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf) {
                    Ok(httparse::Status::Complete(n)) => match framing(&req) {
                        Ok((len, close)) => break (n, len, close),
                        Err(status) => return refuse(&mut stream, status).await,
                    },
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        return refuse(&mut stream, 431).await;
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return refuse(&mut stream, 400).await,
                }
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let end = head_len + body_len;
        buf.reserve(end.saturating_sub(buf.len()));
        while buf.len() < end {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }

        let reply = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            // Parsed whole above.
            let _ = req.parse(&buf[..head_len]);
            let request = Request {
                method: req.method.unwrap_or_default(),
                path: req.path.unwrap_or_default(),
                headers: req.headers,
                body: &buf[head_len..end],
            };
            (server.handler)(&request)
        };
        server.requests.fetch_add(1, Ordering::Relaxed);

        match reply {
            Reply::Hang => std::future::pending::<()>().await,
            Reply::Respond {
                status,
                headers,
                body,
                delay,
            } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                out.clear();
                write_head(&mut out, status, &headers, body.len(), close);
                out.extend_from_slice(&body);
                stream.write_all(&out).await?;
            }
        }
        if close {
            return stream.shutdown().await;
        }
        buf.drain(..end);
    }
}

fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(String, String)],
    body_len: usize,
    close: bool,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-length: {body_len}\r\n",
        reason(status)
    );
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Answers what cannot be read, and closes.
async fn refuse(stream: &mut TcpStream, status: u16) -> std::io::Result<()> {
    let mut out = Vec::new();
    write_head(&mut out, status, &[], 0, true);
    stream.write_all(&out).await?;
    stream.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    /// Writes `raw` on a fresh connection and reads until the server
    /// closes or `timeout` passes.
    async fn raw_exchange(addr: SocketAddr, raw: &[u8], timeout: Duration) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn records_requests_as_sent_and_answers_the_reply() {
        let mut rx = Receiver::start(Reply::Respond {
            status: 201,
            headers: vec![("Retry-After".into(), "7".into())],
            body: b"made".to_vec(),
            delay: Duration::ZERO,
        })
        .await;
        let answer = raw_exchange(
            rx.addr,
            b"POST /hook?token=t HTTP/1.1\r\nHost: x\r\nX-Webhook-Signature: s\r\nx-dup: 1\r\nX-Dup: 2\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            Duration::from_secs(5),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 201 Created\r\n"), "{answer}");
        assert!(answer.contains("\r\nRetry-After: 7\r\n"), "{answer}");
        assert!(answer.contains("\r\ncontent-length: 4\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nmade"), "{answer}");
        let got = rx.next().await;
        assert_eq!(got.method, "POST");
        assert_eq!(got.path, "/hook?token=t");
        assert_eq!(got.body, b"hello");
        assert_eq!(got.status, Some(201));
        assert!(got.headers.iter().any(|(n, _)| n == "X-Webhook-Signature"));
        assert_eq!(got.header("x-webhook-signature"), Some("s"));
        assert_eq!(got.header_count("x-dup"), 2);
        assert_eq!(got.header("X-DUP"), Some("1"));
        assert_eq!(rx.connections(), 1);
        assert!(!rx.untouched_after(Duration::ZERO).await);
    }

    #[tokio::test]
    async fn keeps_connections_alive_and_takes_pipelined_requests() {
        let rx = Receiver::start(Reply::ok()).await;
        let http = client();
        for _ in 0..3 {
            let r = http.post(rx.url("/a")).body("x").send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        assert_eq!(rx.count(), 3);
        assert_eq!(rx.connections(), 1, "one kept-alive connection");

        let two = b"POST /p HTTP/1.1\r\nContent-Length: 1\r\n\r\naGET /q HTTP/1.1\r\nConnection: close\r\n\r\n";
        let answer = raw_exchange(rx.addr, two, Duration::from_secs(5)).await;
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
        let paths: Vec<String> = rx.received().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/a", "/a", "/a", "/p", "/q"]);
    }

    #[tokio::test]
    async fn replies_follow_the_count_per_path() {
        let rx = Receiver::start_with(|r, n| {
            if r.path == "/flaky" && n == 0 {
                Reply::with_body(500, "boom")
            } else {
                Reply::ok()
            }
        })
        .await;
        let http = client();
        let mut statuses = Vec::new();
        for path in ["/flaky", "/other", "/flaky", "/flaky"] {
            let r = http.post(rx.url(path)).send().await.unwrap();
            statuses.push(r.status().as_u16());
        }
        assert_eq!(statuses, [500, 200, 200, 200]);
        let flaky = rx.wait_for_path("/flaky", 3, Duration::from_secs(1)).await;
        assert_eq!(
            flaky.iter().map(|r| r.status).collect::<Vec<_>>(),
            [Some(500), Some(200), Some(200)]
        );
        assert_eq!(rx.on("/other").len(), 1);
        assert_eq!(rx.wait_for(4, Duration::from_secs(1)).await.len(), 4);
    }

    #[tokio::test]
    async fn scripted_statuses_then_200() {
        let rx = Receiver::start_scripted(vec![500, 429]).await;
        let http = client();
        let mut statuses = Vec::new();
        for path in ["/a", "/b", "/a", "/b"] {
            let r = http.post(rx.url(path)).send().await.unwrap();
            statuses.push(r.status().as_u16());
        }
        assert_eq!(statuses, [500, 429, 200, 200]);
    }

    #[tokio::test]
    async fn slow_replies_wait_and_hanging_ones_never_come() {
        let rx = Receiver::start_with(|r, _| {
            if r.path == "/hang" {
                Reply::Hang
            } else {
                Reply::slow(204, Duration::from_millis(300))
            }
        })
        .await;
        let http = client();
        let t = Instant::now();
        let r = http.post(rx.url("/slow")).send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert!(t.elapsed() >= Duration::from_millis(300));
        let hung = http
            .post(rx.url("/hang"))
            .body("b")
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(hung.unwrap_err().is_timeout());
        let got = rx.on("/hang");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].status, None);
        assert_eq!(got[0].body, b"b");
    }

    #[tokio::test]
    async fn untouched_means_no_connection_at_all() {
        let mut rx = Receiver::start(Reply::ok()).await;
        assert!(rx.untouched_after(Duration::from_millis(10)).await);
        let _ = TcpStream::connect(rx.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!rx.untouched_after(Duration::ZERO).await);
    }

    #[tokio::test]
    async fn lean_receivers_hand_the_request_to_the_handler() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let rx = Receiver::start_lean("127.0.0.1:0", move |req| {
            s.lock().push((
                req.method().to_owned(),
                req.path().to_owned(),
                req.header("x-a").map(str::to_owned),
                req.headers().count(),
                req.body().to_vec(),
            ));
            Reply::ok()
        })
        .await
        .unwrap();
        let answer = raw_exchange(
            rx.addr,
            b"PUT /x HTTP/1.1\r\nX-A:  v \r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            Duration::from_secs(5),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert_eq!(rx.count(), 1);
        assert_eq!(
            seen.lock().clone(),
            [(
                "PUT".to_owned(),
                "/x".to_owned(),
                Some("v".to_owned()),
                3,
                b"hi".to_vec()
            )]
        );
    }

    #[tokio::test]
    async fn what_it_does_not_take_is_refused() {
        let rx = Receiver::start(Reply::ok()).await;
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let answer = raw_exchange(rx.addr, chunked, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 501 "), "{answer}");
        let answer = raw_exchange(
            rx.addr,
            b"\x01\x02 nonsense\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert_eq!(rx.count(), 0);
    }

    #[tokio::test]
    async fn dropping_it_closes_open_connections() {
        let rx = Receiver::start(Reply::Hang).await;
        let mut s = TcpStream::connect(rx.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        rx.wait_for(1, Duration::from_secs(5)).await;
        drop(rx);
        let mut out = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("closed in time");
        assert!(n.is_err() || out.is_empty(), "{out:?}");
    }
}

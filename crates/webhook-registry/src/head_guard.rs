//! Request heads that actix-http would refuse on its own, answered as JSON.
//!
//! actix-http answers a request head it cannot take (more than 96 headers,
//! a head past 128 KiB, a URI past 65,534 bytes, a malformed request line
//! or framing header) with an empty 400 or 431 that no service of ours ever
//! sees. [`HeadGuard`] sits between the socket and actix-http and reads
//! each request head first, by the same rules. A head actix-http would
//! refuse is swapped for `GET /_refused/{reason}` with `Connection: close`:
//! the API answers it with its usual `{"detail": …}`, after any response
//! still owed to an earlier pipelined request, and the connection then
//! closes, as it would have. Bodies pass through untouched, framed by
//! `Content-Length` or chunked encoding, so the next head on a keep-alive
//! connection is found; anything the guard cannot frame (an upgrade, a
//! chunk line it cannot parse) is passed through unguarded for the rest of
//! the connection and left to actix-http.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// actix-http's limit on a request head still being received
/// (`h1::decoder::MAX_BUFFER_SIZE`).
pub const MAX_HEAD_BYTES: usize = 131_072;
/// actix-http's limit on headers in one request (`h1::decoder::MAX_HEADERS`).
pub const MAX_HEADERS: usize = 96;
/// The http crate's limit on a URI.
pub const MAX_URI_BYTES: usize = 65_534;
/// A chunk-size line or trailer line longer than this is not framed by the
/// guard (actix-http decides about it).
const MAX_LINE_BYTES: usize = 16 * 1024;
const READ_CHUNK: usize = 8 * 1024;

/// Why a request head was refused: the path segment of the swapped-in
/// request, its status and its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    HeadTooLarge,
    TooManyHeaders,
    UriTooLong,
    Malformed,
    BadContentLength,
    BadTransferEncoding,
    DuplicateHost,
    MissingHost,
    LengthRequired,
}

impl Refusal {
    const ALL: [Refusal; 9] = [
        Refusal::HeadTooLarge,
        Refusal::TooManyHeaders,
        Refusal::UriTooLong,
        Refusal::Malformed,
        Refusal::BadContentLength,
        Refusal::BadTransferEncoding,
        Refusal::DuplicateHost,
        Refusal::MissingHost,
        Refusal::LengthRequired,
    ];

    pub fn path_segment(self) -> &'static str {
        match self {
            Refusal::HeadTooLarge => "head-too-large",
            Refusal::TooManyHeaders => "too-many-headers",
            Refusal::UriTooLong => "uri-too-long",
            Refusal::Malformed => "malformed",
            Refusal::BadContentLength => "content-length",
            Refusal::BadTransferEncoding => "transfer-encoding",
            Refusal::DuplicateHost => "duplicate-host",
            Refusal::MissingHost => "missing-host",
            Refusal::LengthRequired => "length-required",
        }
    }

    pub fn from_path_segment(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.path_segment() == segment)
    }

    pub fn status(self) -> u16 {
        match self {
            Refusal::HeadTooLarge | Refusal::TooManyHeaders => 431,
            Refusal::UriTooLong => 414,
            Refusal::LengthRequired => 411,
            _ => 400,
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Refusal::HeadTooLarge => {
                "Request header fields too large: the request head is over 128 KiB"
            }
            Refusal::TooManyHeaders => "Request header fields too large: more than 96 headers",
            Refusal::UriTooLong => "URI too long: the request target is over 65,534 bytes",
            Refusal::Malformed => "Bad request: malformed HTTP request head",
            Refusal::BadContentLength => {
                "Bad request: Content-Length must be one non-negative integer"
            }
            Refusal::BadTransferEncoding => {
                "Bad request: Transfer-Encoding must be `chunked` (HTTP/1.1 only, once, without Content-Length)"
            }
            Refusal::DuplicateHost => "Bad request: more than one Host header",
            Refusal::MissingHost => "Bad request: HTTP/1.1 requires a Host header",
            Refusal::LengthRequired => "Length required: an HTTP/1.0 POST needs Content-Length",
        }
    }

    /// The request actix-http is given instead of the refused one.
    fn request(self) -> String {
        format!(
            "GET /_refused/{} HTTP/1.1\r\nhost: refused\r\nconnection: close\r\n\r\n",
            self.path_segment()
        )
    }
}

/// Where the guard is in the byte stream of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Before (or inside) a request head; `scanned` bytes hold no end of it.
    Head { scanned: usize },
    /// A body with this many bytes left.
    Fixed(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk: data and its CRLF left.
    ChunkData(u64),
    /// Trailer lines after the last chunk, up to an empty line.
    Trailer,
    /// Not framed any more: everything goes to actix-http as read.
    Through,
    /// A refusal was handed on; nothing more is read.
    Refused,
}

/// An I/O stream that checks request heads before actix-http parses them.
pub struct HeadGuard<T> {
    io: T,
    framing: Framing,
    /// Read from `io`, not yet handed on.
    input: BytesMut,
    /// Checked, ready to be handed to the reader.
    ready: BytesMut,
}

impl<T> HeadGuard<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            framing: Framing::Head { scanned: 0 },
            input: BytesMut::new(),
            ready: BytesMut::new(),
        }
    }

    /// Hands the first `n` bytes of the input on.
    fn pass(&mut self, n: usize) {
        // Both buffers are split off the same allocation in order, so this
        // joins them without copying.
        self.ready.unsplit(self.input.split_to(n));
    }

    fn refuse(&mut self, why: Refusal) {
        self.input.clear();
        self.ready.extend_from_slice(why.request().as_bytes());
        self.framing = Framing::Refused;
    }

    /// Moves what can be decided from `input` to `ready`; false when more
    /// input is needed.
    fn advance(&mut self) -> bool {
        match self.framing {
            Framing::Head { scanned } => {
                let Some(end) = head_end(&self.input, scanned) else {
                    if self.input.len() >= MAX_HEAD_BYTES {
                        self.refuse(Refusal::HeadTooLarge);
                        return true;
                    }
                    self.framing = Framing::Head {
                        scanned: self.input.len().saturating_sub(3),
                    };
                    return false;
                };
                match check_head(&self.input[..end]) {
                    Ok(Some((len, framing))) => {
                        self.pass(len);
                        self.framing = framing;
                    }
                    // Only blank lines so far, or a terminator httparse
                    // does not count: look further.
                    Ok(None) => self.framing = Framing::Head { scanned: end },
                    Err(why) => self.refuse(why),
                }
                true
            }
            Framing::Fixed(left) | Framing::ChunkData(left) => {
                if self.input.is_empty() {
                    return false;
                }
                let n = usize::try_from(left).map_or(self.input.len(), |l| l.min(self.input.len()));
                self.pass(n);
                let left = left - n as u64;
                self.framing = match (self.framing, left) {
                    (Framing::Fixed(_), 0) => Framing::Head { scanned: 0 },
                    (Framing::Fixed(_), _) => Framing::Fixed(left),
                    (_, 0) => Framing::ChunkSize,
                    _ => Framing::ChunkData(left),
                };
                true
            }
            Framing::ChunkSize => match httparse::parse_chunk_size(&self.input) {
                Ok(httparse::Status::Complete((len, size))) => {
                    self.pass(len);
                    self.framing = if size == 0 {
                        Framing::Trailer
                    } else {
                        // The chunk's data, then its CRLF.
                        size.checked_add(2)
                            .map_or(Framing::Through, Framing::ChunkData)
                    };
                    true
                }
                Ok(httparse::Status::Partial) if self.input.len() < MAX_LINE_BYTES => false,
                _ => {
                    self.framing = Framing::Through;
                    true
                }
            },
            Framing::Trailer => match self.input.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let blank = self.input[..nl].iter().all(|&b| b == b'\r');
                    self.pass(nl + 1);
                    if blank {
                        self.framing = Framing::Head { scanned: 0 };
                    }
                    true
                }
                None if self.input.len() < MAX_LINE_BYTES => false,
                None => {
                    self.framing = Framing::Through;
                    true
                }
            },
            Framing::Through => {
                if self.input.is_empty() {
                    return false;
                }
                self.pass(self.input.len());
                true
            }
            Framing::Refused => false,
        }
    }
}

/// The end of a request head (just past its blank line) at or after
/// `from`, as httparse finds it (CRLF or bare LF line ends).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1..) {
                Some([b'\n', ..]) => return Some(i + 2),
                Some([b'\r', b'\n', ..]) => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Checks one complete request head by actix-http's rules; `Ok(None)` when
/// httparse wants more than this.
fn check_head(head: &[u8]) -> Result<Option<(usize, Framing)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(head) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooManyHeaders),
        Err(_) => return Err(Refusal::Malformed),
    };
    let path = req.path.unwrap_or_default();
    if path.len() > MAX_URI_BYTES {
        return Err(Refusal::UriTooLong);
    }
    if actix_web::http::Uri::try_from(path).is_err() {
        return Err(Refusal::Malformed);
    }
    let http11 = req.version == Some(1);
    let mut content_length = None;
    let mut chunked = false;
    let mut seen_te = false;
    let mut seen_host = false;
    let mut upgrade = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map(str::trim);
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = match value {
                Ok(v) if content_length.is_none() && !v.starts_with('+') => v.parse::<u64>(),
                _ => return Err(Refusal::BadContentLength),
            };
            content_length = Some(len.map_err(|_| Refusal::BadContentLength)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if seen_te || !http11 {
                return Err(Refusal::BadTransferEncoding);
            }
            seen_te = true;
            match value {
                Ok(v) if v.eq_ignore_ascii_case("chunked") => chunked = true,
                Ok(v) if v.eq_ignore_ascii_case("identity") => {}
                _ => return Err(Refusal::BadTransferEncoding),
            }
        } else if h.name.eq_ignore_ascii_case("host") {
            if seen_host {
                return Err(Refusal::DuplicateHost);
            }
            seen_host = true;
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if http11 && !seen_host {
        return Err(Refusal::MissingHost);
    }
    if seen_te && (!chunked || content_length.is_some()) {
        return Err(Refusal::BadTransferEncoding);
    }
    if !http11 && req.method == Some("POST") && content_length.is_none() {
        return Err(Refusal::LengthRequired);
    }
    let framing = if upgrade || req.method == Some("CONNECT") {
        Framing::Through
    } else if chunked {
        Framing::ChunkSize
    } else {
        match content_length {
            Some(n) if n > 0 => Framing::Fixed(n),
            _ => Framing::Head { scanned: 0 },
        }
    };
    Ok(Some((len, framing)))
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.framing == Framing::Refused {
                // actix-http answers the swapped-in request and closes the
                // connection (`Connection: close`); it reads nothing more.
                return Poll::Pending;
            }
            if this.advance() {
                continue;
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of input: whatever is left (a partial head) goes to
                // actix-http, which treats it as it would have.
                if this.input.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.framing = Framing::Through;
                continue;
            }
            this.input.extend_from_slice(read.filled());
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// What actix-http would read through the guard when a client sends
    /// `sent` in pieces of `piece` bytes and then closes: up to the end of
    /// input, or up to a refusal (after which the guard reads no more).
    async fn through(sent: &[u8], piece: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let sent = sent.to_vec();
        let writer = tokio::spawn(async move {
            for p in sent.chunks(piece) {
                client.write_all(p).await.unwrap();
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut guard = HeadGuard::new(server);
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while !out.ends_with(b"connection: close\r\n\r\n") {
            let n = guard.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        drop(writer.await);
        out
    }

    fn refused(why: Refusal) -> Vec<u8> {
        why.request().into_bytes()
    }

    #[tokio::test]
    async fn valid_requests_pass_through_unchanged_in_any_pieces() {
        let stream: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
            POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n\
            GET /d HTTP/1.0\r\n\r\n";
        for piece in [1, 2, 7, 64, stream.len()] {
            assert_eq!(through(stream, piece).await, stream, "pieces of {piece}");
        }
    }

    #[tokio::test]
    async fn a_body_that_looks_like_a_bad_head_is_not_checked() {
        let mut stream = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 300\r\n\r\n".to_vec();
        stream.extend(std::iter::repeat_n(b'\n', 300));
        stream.extend_from_slice(b"GET /e HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(through(&stream, 50).await, stream);
    }

    #[tokio::test]
    async fn too_many_headers_is_refused_after_the_earlier_requests() {
        let first = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok".to_vec();
        let mut stream = first.clone();
        stream.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        for i in 0..200 {
            stream.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        stream.extend_from_slice(b"\r\n");
        let mut want = first;
        want.extend(refused(Refusal::TooManyHeaders));
        assert_eq!(through(&stream, 1000).await, want);
    }

    #[tokio::test]
    async fn each_limit_and_rule_gets_its_own_refusal() {
        let long_uri = format!("GET /?q={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
        let huge_head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}",
            "b".repeat(140_000)
        );
        let cases: Vec<(Vec<u8>, Refusal)> = vec![
            (long_uri.into_bytes(), Refusal::UriTooLong),
            (huge_head.into_bytes(), Refusal::HeadTooLarge),
            (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n".to_vec(), Refusal::BadContentLength),
            (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n".to_vec(), Refusal::BadContentLength),
            (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n".to_vec(), Refusal::BadContentLength),
            (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), Refusal::BadTransferEncoding),
            (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n".to_vec(), Refusal::BadTransferEncoding),
            (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), Refusal::BadTransferEncoding),
            (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".to_vec(), Refusal::DuplicateHost),
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), Refusal::MissingHost),
            (b"POST / HTTP/1.0\r\n\r\n".to_vec(), Refusal::LengthRequired),
            (b"GE\x01T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Refusal::Malformed),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), Refusal::Malformed),
        ];
        for (sent, why) in cases {
            assert_eq!(
                through(&sent, 4096).await,
                refused(why),
                "{:?}",
                String::from_utf8_lossy(&sent[..sent.len().min(80)])
            );
        }
    }

    #[tokio::test]
    async fn an_upgrade_is_passed_through_unguarded() {
        let stream = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello\r\n\r\n";
        assert_eq!(through(stream, 9).await, stream);
    }

    #[tokio::test]
    async fn a_partial_head_at_end_of_input_is_handed_on() {
        let stream = b"GET / HTTP/1.1\r\nHo";
        assert_eq!(through(stream, 3).await, stream);
    }

    #[test]
    fn every_refusal_round_trips_through_its_path() {
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_path_segment(r.path_segment()), Some(r));
            assert!((400..500).contains(&r.status()));
        }
        assert_eq!(Refusal::from_path_segment("nope"), None);
    }
}

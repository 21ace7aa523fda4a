//! A WebSocket client over a plain TCP socket that writes exactly the bytes
//! a test asks for (reserved bits, declared lengths without a payload,
//! invalid UTF-8, fragments), and reads frames and the end of the stream.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::WAIT;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn text(&self) -> String {
        String::from_utf8(self.payload.clone()).expect("UTF-8 from the server")
    }

    /// Code and reason of a close frame.
    pub fn close(&self) -> (u16, String) {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        if self.payload.len() < 2 {
            return (1005, String::new());
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        (
            code,
            String::from_utf8(self.payload[2..].to_vec()).expect("UTF-8 reason"),
        )
    }
}

/// What the next read found.
#[derive(Debug)]
pub enum Read {
    Frame(RawFrame),
    /// The server closed the TCP connection (FIN); nothing more will come.
    Eof,
    /// The connection was reset.
    Reset,
}

pub struct RawWs {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

/// The header of a client frame: FIN/RSV/opcode byte, then the masked
/// length, then the mask.
pub fn header(first: u8, len: u64) -> Vec<u8> {
    let mut h = vec![first];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&MASK);
    h
}

/// A whole masked client frame.
pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = header(first, payload.len() as u64);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

/// A masked close frame with a code and no reason.
pub fn close_frame(code: u16) -> Vec<u8> {
    frame(0x80 | OP_CLOSE, &code.to_be_bytes())
}

impl RawWs {
    /// Opens `path_and_query` (e.g. `/ws?token=…`) with a hand-written
    /// handshake; panics unless the answer is 101.
    pub async fn connect(addr: SocketAddr, path_and_query: &str) -> Self {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.expect("handshake");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .expect("handshake answer")
                .expect("read");
            assert!(n > 0, "connection closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        let rest = buf[end..].to_vec();
        Self { tcp, buf: rest }
    }

    /// Connects with a token and reads the welcome message.
    pub async fn connect_ok(addr: SocketAddr, token: &str) -> Self {
        let mut ws = Self::connect(addr, &format!("/ws?token={token}")).await;
        let f = ws.next_data().await;
        assert!(f.text().starts_with(r#"{"type":"connection""#), "{f:?}");
        ws
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    /// Writes, ignoring errors (the server may already have closed).
    pub async fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.tcp.write_all(bytes).await;
    }

    /// The next frame, EOF or reset, waiting at most `wait`.
    pub async fn read_within(&mut self, wait: Duration) -> Read {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((f, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Read::Frame(f);
            }
            let mut chunk = [0u8; 16 * 1024];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.tcp.read(&mut chunk))
                .await
                .expect("timed out waiting for the server");
            match n {
                Ok(0) => return Read::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Read::Reset,
            }
        }
    }

    pub async fn read(&mut self) -> Read {
        self.read_within(WAIT).await
    }

    /// The next text or binary frame, skipping pings.
    pub async fn next_data(&mut self) -> RawFrame {
        loop {
            match self.read().await {
                Read::Frame(f) if f.opcode == OP_PING || f.opcode == OP_PONG => continue,
                Read::Frame(f) => return f,
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// Reads until a close frame (skipping everything else); panics on EOF
    /// or reset before it.
    pub async fn expect_close(&mut self) -> (u16, String) {
        self.expect_close_within(WAIT).await
    }

    pub async fn expect_close_within(&mut self, wait: Duration) -> (u16, String) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_within(left).await {
                Read::Frame(f) if f.opcode == OP_CLOSE => return f.close(),
                Read::Frame(_) => continue,
                other => panic!("the connection ended without a close frame: {other:?}"),
            }
        }
    }

    /// How long until the server ends the TCP connection (EOF or reset),
    /// skipping any frames; panics after `wait`.
    pub async fn time_to_eof(&mut self, wait: Duration) -> Duration {
        let start = Instant::now();
        loop {
            match self.read_within(wait).await {
                Read::Frame(_) => continue,
                Read::Eof | Read::Reset => return start.elapsed(),
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `buf`.
fn parse(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
    let (len, mut idx) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len).expect("length");
    if buf.len() < idx + len {
        return None;
    }
    let payload = buf[idx..idx + len].to_vec();
    idx += len;
    Some((
        RawFrame {
            fin: buf[0] & 0x80 != 0,
            opcode: buf[0] & 0x0f,
            payload,
        },
        idx,
    ))
}

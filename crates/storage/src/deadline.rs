//! A client-side deadline on every pooled connection's socket.
//!
//! `statement_timeout` bounds a query only while the server runs: a server
//! that is frozen (SIGSTOP, a VM pause) or cut off by a silent network
//! keeps the TCP connection open (its kernel still acknowledges), so a
//! query waits forever. [`Guarded`] counts the requests the client has
//! sent that end with `ReadyForQuery` (the startup, every `Sync` and simple
//! `Query`) against the `ReadyForQuery` messages received; while one is
//! outstanding and the server sends nothing for `silence`, the next read
//! fails with `TimedOut`. The driver then closes the connection, every
//! query on it fails as "connection closed" (a 503 in the REST API), and
//! the pool discards it.
//!
//! Bytes received restart the clock, so a long result that keeps arriving
//! is never cut; a query that computes in silence is cut after `silence`,
//! which is why it is set a little above `statement_timeout` (the server
//! cancels such a query first, with a proper error, when it runs at all).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Splits a PostgreSQL message stream into messages, counting those of
/// one type. `untyped_first` for the frontend stream, whose first message
/// (the startup packet) has no type byte.
#[derive(Debug)]
struct Framer {
    /// The header being read: type byte and length (or only the length).
    header: [u8; 5],
    have: usize,
    /// Body bytes of the current message still to skip.
    body_left: usize,
    untyped_next: bool,
}

impl Framer {
    fn new(untyped_first: bool) -> Self {
        Self {
            header: [0; 5],
            have: 0,
            body_left: 0,
            untyped_next: untyped_first,
        }
    }

    /// Feeds bytes; calls `on_message(type)` for every message header
    /// completed (`0` for the untyped startup packet).
    fn feed(&mut self, mut bytes: &[u8], mut on_message: impl FnMut(u8)) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len());
                self.body_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let need = if self.untyped_next { 4 } else { 5 };
            let take = (need - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have < need {
                return;
            }
            let (kind, len) = if self.untyped_next {
                let len = [
                    self.header[0],
                    self.header[1],
                    self.header[2],
                    self.header[3],
                ];
                (0, u32::from_be_bytes(len))
            } else {
                let len = [
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ];
                (self.header[0], u32::from_be_bytes(len))
            };
            // The length counts itself.
            self.body_left = usize::try_from(len).unwrap_or(usize::MAX).saturating_sub(4);
            self.have = 0;
            self.untyped_next = false;
            on_message(kind);
        }
    }
}

/// A socket whose reads fail once the server has been silent for
/// `silence` while a request is outstanding (see the module docs).
pub struct Guarded<S> {
    inner: S,
    silence: Duration,
    sent: Framer,
    received: Framer,
    /// Requests sent that end with `ReadyForQuery`, minus those received.
    outstanding: u64,
    timer: Pin<Box<Sleep>>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, silence: Duration) -> Self {
        Self {
            inner,
            silence,
            sent: Framer::new(true),
            received: Framer::new(false),
            outstanding: 0,
            timer: Box::pin(tokio::time::sleep(silence)),
        }
    }

    fn restart_clock(&mut self) {
        let at = Instant::now() + self.silence;
        self.timer.as_mut().reset(at);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    let mut ready = 0u64;
                    this.received.feed(got, |kind| {
                        if kind == b'Z' {
                            ready += 1;
                        }
                    });
                    this.outstanding = this.outstanding.saturating_sub(ready);
                    this.restart_clock();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.outstanding > 0 && this.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the database sent nothing for {} ms while a query waited",
                            this.silence.as_millis()
                        ),
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            let mut requests = 0u64;
            this.sent.feed(&buf[..*n], |kind| {
                // The startup packet, Sync and a simple Query each end with
                // ReadyForQuery. (The SSL request is never sent: no TLS.)
                if matches!(kind, 0 | b'S' | b'Q') {
                    requests += 1;
                }
            });
            if requests > 0 {
                if this.outstanding == 0 {
                    this.restart_clock();
                }
                this.outstanding += requests;
                // Registers the deadline with this task, so that it wakes
                // even when no byte ever comes back.
                let _ = this.timer.as_mut().poll(cx);
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(f: &mut Framer, chunks: &[&[u8]]) -> Vec<u8> {
        let mut seen = Vec::new();
        for c in chunks {
            f.feed(c, |k| seen.push(k));
        }
        seen
    }

    #[test]
    fn framer_finds_messages_split_anywhere() {
        // Startup (8 bytes: length 8, protocol), then Query "x\0" and Sync.
        let mut stream = vec![0, 0, 0, 8, 0, 3, 0, 0];
        stream.extend_from_slice(&[b'Q', 0, 0, 0, 6, b'x', 0]);
        stream.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        for split in 0..stream.len() {
            let mut f = Framer::new(true);
            let (a, b) = stream.split_at(split);
            assert_eq!(
                kinds(&mut f, &[a, b]),
                vec![0, b'Q', b'S'],
                "split at {split}"
            );
        }
        let mut f = Framer::new(true);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(kinds(&mut f, &bytes), vec![0, b'Q', b'S']);
    }

    #[test]
    fn framer_skips_bodies_that_look_like_headers() {
        // A DataRow whose body holds the bytes of a ReadyForQuery.
        let mut stream = vec![b'D', 0, 0, 0, 10, b'Z', 0, 0, 0, 5, b'I'];
        stream.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
        let mut f = Framer::new(false);
        assert_eq!(kinds(&mut f, &[&stream]), vec![b'D', b'Z']);
    }
}

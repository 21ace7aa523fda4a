//! `bench fanout-floor`: the least work a WebSocket fan-out
//! server can do, measured beside the gateway and nchan.
//!
//! It takes WebSocket clients on `GET /sub` and events on `POST /pub` (the
//! interface of the nchan set-up, so `bench fanout --peer floor` drives it
//! the same way) and writes each event, as one prebuilt text frame, to
//! every client with one `send(2)`. Nothing else: no per-client state,
//! filter, queue or timer, no reads after the handshake, one blocking
//! channel wake per event per thread. Its CPU per delivered message is
//! what the kernel charges for one loopback TCP write to one reader: the
//! floor under any server that sends each event as it comes.
//!
//! Not a server for anything but this measurement: a client whose socket
//! does not take a whole frame at once is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use gateway::wire;
use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Options of `bench fanout-floor`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where to listen (`/sub` for WebSocket clients, `/pub` for events).
    #[arg(long, default_value = "127.0.0.1:8092")]
    pub listen: SocketAddr,
    /// Writer threads, each with its share of the clients (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// One writer thread's clients and its event channel.
struct Writer {
    clients: Arc<Mutex<Vec<TcpStream>>>,
    events: mpsc::Sender<Bytes>,
}

/// Serves until the process is killed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let writers: Vec<Writer> = (0..threads).map(|_| spawn_writer()).collect();
    let writers = Arc::new(writers);
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("cannot bind {}", args.listen))?;
    eprintln!(
        "fanout-floor: listening on {} with {threads} writer threads",
        args.listen
    );
    let mut next = 0usize;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if let Err(e) = accept(stream, &writers, &mut next) {
            eprintln!("fanout-floor: {e:#}");
        }
    }
    Ok(())
}

fn spawn_writer() -> Writer {
    let clients = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
    let (events, rx) = mpsc::channel::<Bytes>();
    let mine = clients.clone();
    std::thread::spawn(move || {
        for frame in rx {
            // `TcpStream::write` is one `send(2)` on Linux. A client that
            // does not take the whole frame (or is gone) is dropped: a
            // partial frame would break its stream.
            mine.lock()
                .retain_mut(|c| matches!(c.write(&frame), Ok(n) if n == frame.len()));
        }
    });
    Writer { clients, events }
}

/// A request head: method, path and the two headers this server reads.
struct Head {
    method: String,
    path: String,
    ws_key: Option<String>,
    content_length: usize,
}

/// Reads one request head; `None` at end of stream.
fn read_head(r: &mut impl BufRead) -> anyhow::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        anyhow::bail!("not an HTTP request line: {:?}", line.trim_end());
    };
    let mut head = Head {
        method: method.to_owned(),
        path: path.to_owned(),
        ws_key: None,
        content_length: 0,
    };
    let mut read = line.len();
    loop {
        line.clear();
        anyhow::ensure!(r.read_line(&mut line)? > 0, "the request head ended early");
        read += line.len();
        anyhow::ensure!(read <= MAX_HEAD, "a request head over {MAX_HEAD} bytes");
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(Some(head));
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("sec-websocket-key") {
                head.ws_key = Some(v.trim().to_owned());
            } else if k.eq_ignore_ascii_case("content-length") {
                head.content_length = v.trim().parse().context("Content-Length")?;
            }
        }
    }
}

/// Completes a subscriber's handshake (handing its socket to a writer) or
/// starts a publisher's thread.
fn accept(stream: TcpStream, writers: &Arc<Vec<Writer>>, next: &mut usize) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let mut stream = reader.get_ref().try_clone()?;
    match (head.method.as_str(), head.path.as_str(), head.ws_key) {
        ("GET", "/sub", Some(key)) => {
            let accept = derive_accept_key(key.as_bytes());
            stream.write_all(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .as_bytes(),
            )?;
            // the same socket options as the gateway's
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            writers[*next % writers.len()].clients.lock().push(stream);
            *next += 1;
        }
        ("POST", "/pub", _) => {
            stream.set_read_timeout(None)?;
            let writers = writers.clone();
            std::thread::spawn(move || {
                if let Err(e) = publish(reader, head.content_length, &writers) {
                    eprintln!("fanout-floor: publisher: {e:#}");
                }
            });
        }
        _ => {
            stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
        }
    }
    Ok(())
}

/// Reads the events of one kept-alive publisher connection and hands each
/// frame to every writer.
fn publish(
    mut reader: BufReader<TcpStream>,
    first_length: usize,
    writers: &[Writer],
) -> anyhow::Result<()> {
    let mut length = first_length;
    loop {
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        // the gateway's own framing, so both send the same bytes
        let frame = wire::frame(wire::OP_TEXT, &body);
        for w in writers {
            w.events
                .send(frame.clone())
                .context("a writer thread ended")?;
        }
        reader
            .get_mut()
            .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")?;
        match read_head(&mut reader)? {
            Some(head) if head.method == "POST" => length = head.content_length,
            Some(head) => anyhow::bail!("{} {} on a publisher connection", head.method, head.path),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_a_request_head() {
        let raw = b"POST /pub HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\n\r\nrest";
        let mut r = BufReader::new(&raw[..]);
        let head = read_head(&mut r).unwrap().unwrap();
        assert_eq!((head.method.as_str(), head.path.as_str()), ("POST", "/pub"));
        assert_eq!(head.content_length, 12);
        assert!(head.ws_key.is_none());
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "rest");
        assert!(read_head(&mut BufReader::new(&b""[..])).unwrap().is_none());
        assert!(read_head(&mut BufReader::new(&b"GET /sub HTTP/1.1\r\n"[..])).is_err());
    }
}

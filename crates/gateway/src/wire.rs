//! WebSocket framing (RFC 6455 §5) for the connections the gateway owns
//! after the handshake: a decoder for client frames that checks every
//! header before buffering a payload (size limits on single frames and on
//! the running total of a fragmented message, reserved bits, opcodes,
//! masking, control-frame rules, UTF-8), and the encoding of server frames.

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes the gateway sends.
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const AGAIN: u16 = 1013;
}

/// Largest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;
/// Largest close reason: a control payload less the 2-byte code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL - 2;
/// Longest server frame header: 2 bytes and a 64-bit length.
pub const MAX_HEADER: usize = 10;

/// A complete message or control frame from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The close code, if the frame had one.
    Close(Option<u16>),
}

/// Why the client's bytes cannot be read as WebSocket frames; each maps to
/// the close code the server answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A frame, or a fragmented message so far, is past the limit (1009).
    #[error("message too big")]
    TooBig,
    /// A text message or close reason that is not UTF-8 (1007).
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// Anything else RFC 6455 forbids (1002).
    #[error("{0}")]
    Protocol(&'static str),
}

impl WireError {
    pub fn close_code(&self) -> u16 {
        match self {
            WireError::TooBig => code::TOO_BIG,
            WireError::InvalidUtf8 => code::INVALID_DATA,
            WireError::Protocol(_) => code::PROTOCOL,
        }
    }
}

struct Fragments {
    text: bool,
    data: BytesMut,
}

/// Decodes client frames from the bytes read so far.
pub struct Decoder {
    max_message: usize,
    buf: BytesMut,
    fragments: Option<Fragments>,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: u8,
    /// Bytes of the header including the mask.
    len: usize,
    payload: usize,
    mask: [u8; 4],
}

impl Decoder {
    /// `max_message` bounds every data frame and the total of a
    /// fragmented message.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            buf: BytesMut::new(),
            fragments: None,
        }
    }

    /// The buffer to read socket bytes into.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Frees the read buffer when nothing is pending in it, so an idle
    /// connection holds no buffer.
    pub fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// The next complete message or control frame, `None` when more
    /// bytes are needed. A frame is refused as soon as its header is in:
    /// its payload is never buffered.
    pub fn decode(&mut self) -> Result<Option<Inbound>, WireError> {
        loop {
            let Some(h) = self.header()? else {
                return Ok(None);
            };
            if self.buf.len() < h.len + h.payload {
                self.buf.reserve(h.len + h.payload - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(h.len);
            let mut payload = self.buf.split_to(h.payload);
            unmask(&mut payload, h.mask);
            if let Some(msg) = self.frame(h.fin, h.opcode, payload)? {
                return Ok(Some(msg));
            }
        }
    }

    /// Parses and checks the header at the front of the buffer.
    fn header(&self) -> Result<Option<Header>, WireError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(WireError::Protocol(
                "reserved bits set without an extension",
            ));
        }
        let opcode = b[0] & 0x0f;
        let control = match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
            OP_CLOSE | OP_PING | OP_PONG => true,
            _ => return Err(WireError::Protocol("reserved opcode")),
        };
        if b[1] & 0x80 == 0 {
            return Err(WireError::Protocol("client frames must be masked"));
        }
        let (declared, mut len) = match b[1] & 0x7f {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                let n = u64::from_be_bytes(n);
                if n >> 63 != 0 {
                    return Err(WireError::Protocol("frame length with the top bit set"));
                }
                (n, 10)
            }
            n => (u64::from(n), 2),
        };
        if control {
            if !fin {
                return Err(WireError::Protocol("fragmented control frame"));
            }
            if declared > MAX_CONTROL as u64 {
                return Err(WireError::Protocol("control frame over 125 bytes"));
            }
        } else {
            let so_far = match (&self.fragments, opcode) {
                (None, OP_CONTINUATION) => {
                    return Err(WireError::Protocol("continuation frame without a start"));
                }
                (Some(_), OP_TEXT | OP_BINARY) => {
                    return Err(WireError::Protocol(
                        "new message inside a fragmented message",
                    ));
                }
                (Some(f), _) => f.data.len() as u64,
                (None, _) => 0,
            };
            if so_far.saturating_add(declared) > self.max_message as u64 {
                return Err(WireError::TooBig);
            }
        }
        if b.len() < len + 4 {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&b[len..len + 4]);
        len += 4;
        Ok(Some(Header {
            fin,
            opcode,
            len,
            // bounded by `max_message` or 125 above
            payload: usize::try_from(declared).map_err(|_| WireError::TooBig)?,
            mask,
        }))
    }

    fn frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: BytesMut,
    ) -> Result<Option<Inbound>, WireError> {
        match opcode {
            OP_TEXT | OP_BINARY if fin => message(opcode == OP_TEXT, payload).map(Some),
            OP_TEXT | OP_BINARY => {
                self.fragments = Some(Fragments {
                    text: opcode == OP_TEXT,
                    data: payload,
                });
                Ok(None)
            }
            OP_CONTINUATION => {
                let Some(f) = self.fragments.as_mut() else {
                    return Err(WireError::Protocol("continuation frame without a start"));
                };
                f.data.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                let Some(f) = self.fragments.take() else {
                    return Ok(None);
                };
                message(f.text, f.data).map(Some)
            }
            OP_PING => Ok(Some(Inbound::Ping(payload.freeze()))),
            OP_PONG => Ok(Some(Inbound::Pong)),
            _ => close_payload(&payload).map(|c| Some(Inbound::Close(c))),
        }
    }
}

fn message(text: bool, data: BytesMut) -> Result<Inbound, WireError> {
    if text {
        ByteString::try_from(data.freeze())
            .map(Inbound::Text)
            .map_err(|_| WireError::InvalidUtf8)
    } else {
        Ok(Inbound::Binary(data.freeze()))
    }
}

/// The code of a close frame; its payload is empty or a valid code and a
/// UTF-8 reason (RFC 6455 §5.5.1, §7.4).
fn close_payload(p: &[u8]) -> Result<Option<u16>, WireError> {
    match p.len() {
        0 => return Ok(None),
        1 => return Err(WireError::Protocol("close frame with a one-byte payload")),
        _ => {}
    }
    let code = u16::from_be_bytes([p[0], p[1]]);
    let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    if !valid {
        return Err(WireError::Protocol("invalid close code"));
    }
    if std::str::from_utf8(&p[2..]).is_err() {
        return Err(WireError::InvalidUtf8);
    }
    Ok(Some(code))
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// The header of an unmasked, final server frame; returns the bytes and
/// how many of them are used.
pub fn header(opcode: u8, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A whole server frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let (h, n) = header(opcode, payload.len());
    let mut out = BytesMut::with_capacity(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    out.freeze()
}

/// A close frame; the reason is cut to 123 bytes at a character boundary.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OP_CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn client(first: u8, declared: u64, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        if declared < 126 {
            f.push(0x80 | declared as u8);
        } else if declared <= 0xffff {
            f.push(0x80 | 126);
            f.extend_from_slice(&(declared as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&declared.to_be_bytes());
        }
        f.extend_from_slice(&MASK);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        f
    }

    fn whole(first: u8, payload: &[u8]) -> Vec<u8> {
        client(first, payload.len() as u64, payload)
    }

    fn decode(max: usize, bytes: &[u8]) -> Result<Vec<Inbound>, WireError> {
        let mut d = Decoder::new(max);
        d.buffer().extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(m) = d.decode()? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn messages_and_control_frames() {
        let mut bytes = whole(0x81, b"hello, \xd0\xbc\xd0\xb8\xd1\x80");
        bytes.extend(whole(0x82, &[0xff, 0]));
        bytes.extend(whole(0x89, b"p"));
        bytes.extend(whole(0x8A, b""));
        bytes.extend(whole(0x01, b"frag"));
        bytes.extend(whole(0x89, b""));
        bytes.extend(whole(0x80, b"ment"));
        bytes.extend(whole(0x88, &[0x03, 0xe8, b'o', b'k']));
        assert_eq!(
            decode(1024, &bytes).unwrap(),
            vec![
                Inbound::Text("hello, мир".into()),
                Inbound::Binary(Bytes::from_static(&[0xff, 0])),
                Inbound::Ping(Bytes::from_static(b"p")),
                Inbound::Pong,
                Inbound::Ping(Bytes::new()),
                Inbound::Text("fragment".into()),
                Inbound::Close(Some(1000)),
            ]
        );
        assert_eq!(
            decode(10, &whole(0x88, b"")).unwrap(),
            vec![Inbound::Close(None)]
        );
    }

    #[test]
    fn byte_by_byte_input_decodes_the_same() {
        let bytes = whole(0x81, &vec![b'a'; 300]);
        let mut d = Decoder::new(1024);
        let mut got = None;
        for b in &bytes {
            d.buffer().extend_from_slice(&[*b]);
            if let Some(m) = d.decode().unwrap() {
                got = Some(m);
            }
        }
        assert_eq!(got, Some(Inbound::Text("a".repeat(300).into())));
        d.release();
        assert_eq!(d.buffer().capacity(), 0);
    }

    #[test]
    fn sizes_are_refused_on_the_header() {
        // 2^40 declared, no payload sent: refused with only 14 bytes in
        let h = client(0x82, 1 << 40, b"");
        assert_eq!(decode(65536, &h), Err(WireError::TooBig));
        assert_eq!(decode(65536, &h[..10]), Err(WireError::TooBig));
        // exactly the limit is fine, one more is not
        assert!(decode(100, &whole(0x81, &[b'x'; 100])).is_ok());
        assert_eq!(decode(100, &client(0x81, 101, b"")), Err(WireError::TooBig));
        // the running total of fragments
        let mut b = whole(0x01, &[b'x'; 60]);
        b.extend(whole(0x00, &[b'x'; 40]));
        b.extend(client(0x80, 1, b""));
        assert_eq!(decode(100, &b), Err(WireError::TooBig));
        let mut b = whole(0x01, &[b'x'; 60]);
        b.extend(whole(0x80, &[b'x'; 40]));
        assert!(decode(100, &b).is_ok());
        // the top bit of a 64-bit length
        assert!(matches!(
            decode(100, &client(0x82, 1 << 63, b"")),
            Err(WireError::Protocol(_))
        ));
    }

    #[test]
    fn protocol_errors() {
        let protocol = |bytes: &[u8]| matches!(decode(1024, bytes), Err(WireError::Protocol(_)));
        assert!(protocol(&whole(0xC1, b"x"))); // RSV1
        assert!(protocol(&whole(0xA1, b"x"))); // RSV2
        assert!(protocol(&whole(0x83, b"x"))); // reserved opcode
        assert!(protocol(&whole(0x8B, b"x"))); // reserved control opcode
        assert!(protocol(&[0x81, 0x01, b'x'])); // unmasked
        assert!(protocol(&whole(0x80, b"x"))); // continuation, no start
        let mut b = whole(0x01, b"a");
        b.extend(whole(0x81, b"b"));
        assert!(protocol(&b)); // new message while fragmented
        assert!(protocol(&whole(0x09, b""))); // fragmented ping
        assert!(protocol(&whole(0x89, &[0; 126]))); // long ping
        assert!(protocol(&whole(0x88, &[3]))); // one-byte close
        for bad in [999u16, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert!(protocol(&whole(0x88, &bad.to_be_bytes())), "{bad}");
        }
        for good in [1000u16, 1001, 1003, 1007, 1011, 3000, 4999] {
            assert_eq!(
                decode(1024, &whole(0x88, &good.to_be_bytes())).unwrap(),
                vec![Inbound::Close(Some(good))]
            );
        }
    }

    #[test]
    fn utf8_is_checked_on_whole_text_messages_and_close_reasons() {
        assert_eq!(
            decode(1024, &whole(0x81, b"\xff")),
            Err(WireError::InvalidUtf8)
        );
        // a character split over two fragments is fine
        let mut b = whole(0x01, b"\xd0");
        b.extend(whole(0x80, b"\xbc"));
        assert_eq!(decode(1024, &b).unwrap(), vec![Inbound::Text("м".into())]);
        let mut b = whole(0x01, b"\xe2\x82");
        b.extend(whole(0x80, b"\x28"));
        assert_eq!(decode(1024, &b), Err(WireError::InvalidUtf8));
        assert_eq!(
            decode(1024, &whole(0x88, &[0x03, 0xe8, 0xff])),
            Err(WireError::InvalidUtf8)
        );
        // binary messages are not checked
        assert!(decode(1024, &whole(0x82, b"\xff")).is_ok());
        assert_eq!(WireError::InvalidUtf8.close_code(), 1007);
        assert_eq!(WireError::TooBig.close_code(), 1009);
        assert_eq!(WireError::Protocol("x").close_code(), 1002);
    }

    #[test]
    fn server_frames() {
        assert_eq!(&frame(OP_TEXT, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = frame(OP_TEXT, &[b'x'; 200]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 200]);
        let f = frame(OP_BINARY, &vec![0; 70_000]);
        assert_eq!(&f[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        let c = close_frame(1000, &"é".repeat(100));
        assert_eq!(c[0], 0x88);
        assert!(usize::from(c[1]) <= MAX_CONTROL);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
        assert_eq!(&c[2..4], &[0x03, 0xe8]);
    }
}

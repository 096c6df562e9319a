//! The wire format: frame types, the header, and per-type payload codecs (spec/frames.md).
//!
//! Decoding takes one whole WebSocket message as [`Bytes`] and yields its frames in order;
//! every payload field that carries bytes is a zero-copy slice of that message. Encoding
//! appends to a [`BytesMut`] so a sender can coalesce many frames into one message.

mod accept;
mod close;
mod credential;
mod credit;
mod data;
mod error;
mod goaway;
mod header;
mod open;
mod ping;
mod reader;
mod settings;
mod text;

use bytes::{Bytes, BytesMut};

pub use accept::{Accept, Permissions, RateLimits};
pub use close::{ConnClose, SessionClose, MAX_REASON_LEN};
pub use credential::Credential;
pub use credit::Credit;
pub use data::Data;
pub use error::FrameError;
pub use goaway::GoAway;
pub use header::{Header, FLAG_END, FLAG_FIN, HEADER_LEN, VERSION};
pub use open::{Open, OpenRequest, MAX_KIND_LEN, OPEN_FIXED_LEN};
pub use ping::PING_LEN;
pub use settings::{Setting, Settings, MAX_SETTINGS, MIN_FRAGMENT};
pub use text::Text;

use reader::Reader;

/// The frame type: the low nibble of a header's first byte (spec/frames.md#frame-types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Message bytes on a session.
    Data = 0x0,
    /// Opens a session, with its kind, credentials and requested limits.
    Open = 0x1,
    /// Accepts a session, with the granted permissions and limits.
    Accept = 0x2,
    /// Adds receive credit to a session, in messages and bytes.
    Credit = 0x3,
    /// Closes a session gracefully after the sender's data.
    Close = 0x4,
    /// Aborts a session (or refuses an OPEN), discarding undelivered data.
    Reset = 0x5,
    /// The limits the sender enforces; the first frame each side sends.
    Settings = 0x6,
    /// Asks for a PONG with the same payload.
    Ping = 0x7,
    /// Answers a PING.
    Pong = 0x8,
    /// Announces graceful shutdown: no sessions above the last ID will be accepted.
    GoAway = 0x9,
    /// Closes the whole connection with a code.
    ConnClose = 0xa,
}

impl FrameType {
    /// Every frame type, in wire order.
    pub const ALL: [FrameType; 11] = [
        FrameType::Data,
        FrameType::Open,
        FrameType::Accept,
        FrameType::Credit,
        FrameType::Close,
        FrameType::Reset,
        FrameType::Settings,
        FrameType::Ping,
        FrameType::Pong,
        FrameType::GoAway,
        FrameType::ConnClose,
    ];

    /// The type for a header nibble, or `None` for an unassigned value.
    pub fn from_nibble(nibble: u8) -> Option<FrameType> {
        Some(match nibble {
            0x0 => FrameType::Data,
            0x1 => FrameType::Open,
            0x2 => FrameType::Accept,
            0x3 => FrameType::Credit,
            0x4 => FrameType::Close,
            0x5 => FrameType::Reset,
            0x6 => FrameType::Settings,
            0x7 => FrameType::Ping,
            0x8 => FrameType::Pong,
            0x9 => FrameType::GoAway,
            0xa => FrameType::ConnClose,
            _ => return None,
        })
    }

    /// The name used in `spec/frames.md` and the test vectors.
    pub fn name(self) -> &'static str {
        match self {
            FrameType::Data => "DATA",
            FrameType::Open => "OPEN",
            FrameType::Accept => "ACCEPT",
            FrameType::Credit => "CREDIT",
            FrameType::Close => "CLOSE",
            FrameType::Reset => "RESET",
            FrameType::Settings => "SETTINGS",
            FrameType::Ping => "PING",
            FrameType::Pong => "PONG",
            FrameType::GoAway => "GOAWAY",
            FrameType::ConnClose => "CONN_CLOSE",
        }
    }

    /// True for frames that travel on session 0 (the control channel).
    pub const fn is_connection_frame(self) -> bool {
        matches!(
            self,
            FrameType::Settings
                | FrameType::Ping
                | FrameType::Pong
                | FrameType::GoAway
                | FrameType::ConnClose
        )
    }

    /// The flag bits this type defines; any other bit set is an error.
    pub const fn defined_flags(self) -> u8 {
        match self {
            FrameType::Data => FLAG_END | FLAG_FIN,
            _ => 0,
        }
    }

    /// Inclusive payload length bounds implied by the type alone (spec/frames.md#frame-types).
    ///
    /// DATA has no bound here: its bound is the receiver's MAX_FRAME_SIZE setting.
    pub const fn len_bounds(self) -> (u32, u32) {
        const CLOSE_MIN: u32 = 6;
        const CLOSE_MAX: u32 = CLOSE_MIN + MAX_REASON_LEN as u32;
        match self {
            FrameType::Data => (0, u32::MAX),
            FrameType::Open => (OPEN_FIXED_LEN as u32, open::MAX_OPEN_LEN as u32),
            FrameType::Accept => (accept::ACCEPT_LEN as u32, accept::ACCEPT_LEN as u32),
            FrameType::Credit => (credit::CREDIT_LEN as u32, credit::CREDIT_LEN as u32),
            FrameType::Close | FrameType::Reset | FrameType::ConnClose | FrameType::GoAway => {
                (CLOSE_MIN, CLOSE_MAX)
            }
            FrameType::Settings => (0, settings::MAX_SETTINGS_LEN as u32),
            FrameType::Ping | FrameType::Pong => (PING_LEN as u32, PING_LEN as u32),
        }
    }
}

/// One decoded frame. Byte fields are zero-copy slices of the message it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Message bytes on a session.
    Data(Data),
    /// Opens a session.
    Open(Open),
    /// Accepts a session.
    Accept(Accept),
    /// Adds receive credit to a session.
    Credit(Credit),
    /// Closes a session gracefully.
    Close(SessionClose),
    /// Aborts a session or refuses an OPEN.
    Reset(SessionClose),
    /// The sender's limits.
    Settings(Settings),
    /// Keepalive probe; the payload is echoed in the PONG.
    Ping(u64),
    /// Keepalive answer.
    Pong(u64),
    /// Graceful shutdown announcement.
    GoAway(GoAway),
    /// Closes the connection.
    ConnClose(ConnClose),
}

impl Frame {
    /// Decodes the payload of a frame whose header has already been parsed and checked.
    ///
    /// `payload` must be exactly `header.len` bytes; [`Frames`] guarantees it.
    pub fn decode_body(header: &Header, payload: Bytes) -> Result<Frame, FrameError> {
        let id = header.session_id;
        let mut r = Reader::new(header.frame_type, payload);
        let frame = match header.frame_type {
            FrameType::Data => Frame::Data(Data::decode(header, r.rest())),
            FrameType::Open => Frame::Open(Open::decode(id, &mut r)?),
            FrameType::Accept => Frame::Accept(Accept::decode(id, &mut r)?),
            FrameType::Credit => Frame::Credit(Credit::decode(id, &mut r)?),
            FrameType::Close => Frame::Close(SessionClose::decode(id, &mut r)?),
            FrameType::Reset => Frame::Reset(SessionClose::decode(id, &mut r)?),
            FrameType::Settings => Frame::Settings(Settings::decode(&mut r)?),
            FrameType::Ping => Frame::Ping(r.u64("payload")?),
            FrameType::Pong => Frame::Pong(r.u64("payload")?),
            FrameType::GoAway => Frame::GoAway(GoAway::decode(&mut r)?),
            FrameType::ConnClose => Frame::ConnClose(ConnClose::decode(&mut r)?),
        };
        r.finish()?;
        Ok(frame)
    }

    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Data(_) => FrameType::Data,
            Frame::Open(_) => FrameType::Open,
            Frame::Accept(_) => FrameType::Accept,
            Frame::Credit(_) => FrameType::Credit,
            Frame::Close(_) => FrameType::Close,
            Frame::Reset(_) => FrameType::Reset,
            Frame::Settings(_) => FrameType::Settings,
            Frame::Ping(_) => FrameType::Ping,
            Frame::Pong(_) => FrameType::Pong,
            Frame::GoAway(_) => FrameType::GoAway,
            Frame::ConnClose(_) => FrameType::ConnClose,
        }
    }

    /// The session the frame belongs to (0 for connection frames).
    pub fn session_id(&self) -> crate::SessionId {
        match self {
            Frame::Data(f) => f.session_id,
            Frame::Open(f) => f.session_id,
            Frame::Accept(f) => f.session_id,
            Frame::Credit(f) => f.session_id,
            Frame::Close(f) | Frame::Reset(f) => f.session_id,
            _ => crate::SessionId::CONTROL,
        }
    }

    /// Bytes the frame takes on the wire, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.payload_len())
    }

    fn payload_len(&self) -> usize {
        match self {
            Frame::Data(f) => f.payload.len(),
            Frame::Open(f) => f.payload_len(),
            Frame::Accept(_) => accept::ACCEPT_LEN,
            Frame::Credit(_) => credit::CREDIT_LEN,
            Frame::Close(f) | Frame::Reset(f) => f.payload_len(),
            Frame::Settings(f) => f.payload_len(),
            Frame::Ping(_) | Frame::Pong(_) => PING_LEN,
            Frame::GoAway(f) => f.payload_len(),
            Frame::ConnClose(f) => f.payload_len(),
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Frame::Data(f) => f.flags(),
            _ => 0,
        }
    }

    /// Appends the frame, header first, to `out`.
    ///
    /// Frames built through this crate's constructors always encode to bytes that
    /// [`Frames`] decodes back to an equal frame.
    pub fn encode(&self, out: &mut BytesMut) {
        let len = self.payload_len();
        out.reserve(HEADER_LEN.saturating_add(len));
        Header {
            frame_type: self.frame_type(),
            flags: self.flags(),
            session_id: self.session_id(),
            // Payload lengths are bounded by the constructors (DATA by MAX_FRAME_SIZE ≤ 16 MiB).
            len: u32::try_from(len).unwrap_or(u32::MAX),
        }
        .encode(out);
        match self {
            Frame::Data(f) => out.extend_from_slice(&f.payload),
            Frame::Open(f) => f.encode_payload(out),
            Frame::Accept(f) => f.encode_payload(out),
            Frame::Credit(f) => f.encode_payload(out),
            Frame::Close(f) | Frame::Reset(f) => f.encode_payload(out),
            Frame::Settings(f) => f.encode_payload(out),
            Frame::Ping(p) | Frame::Pong(p) => bytes::BufMut::put_u64(out, *p),
            Frame::GoAway(f) => f.encode_payload(out),
            Frame::ConnClose(f) => f.encode_payload(out),
        }
    }
}

/// Splits the next frame off the front of `message`: its checked header and its payload.
///
/// This is the receiver's first step: it sees the header (and can check limits on it)
/// before it decodes, buffers or copies the payload.
pub fn split_frame(message: &mut Bytes) -> Result<(Header, Bytes), FrameError> {
    let header = Header::parse(message)?;
    let available = message.len().saturating_sub(HEADER_LEN);
    let len = usize::try_from(header.len).unwrap_or(usize::MAX);
    if len > available {
        return Err(FrameError::TruncatedPayload {
            frame_type: header.frame_type,
            declared: header.len,
            available,
        });
    }
    bytes::Buf::advance(message, HEADER_LEN);
    let payload = message.split_to(len);
    Ok((header, payload))
}

/// The frames of one WebSocket message, in order.
///
/// Yields `Err` once, at the first malformed frame, and then stops: framing after an error
/// cannot be trusted (spec/frames.md#errors).
#[derive(Debug, Clone)]
pub struct Frames {
    rest: Bytes,
    started: bool,
    failed: bool,
}

impl Frames {
    /// Starts decoding `message`, which must be one whole WebSocket binary message.
    pub fn new(message: Bytes) -> Self {
        Frames {
            rest: message,
            started: false,
            failed: false,
        }
    }
}

impl Iterator for Frames {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.rest.is_empty() {
            if self.started {
                return None;
            }
            self.failed = true;
            return Some(Err(FrameError::EmptyMessage));
        }
        self.started = true;
        let result = split_frame(&mut self.rest)
            .and_then(|(header, payload)| Frame::decode_body(&header, payload));
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }
}

/// Decodes every frame of one message, stopping at the first error.
pub fn decode_message(message: Bytes) -> Result<Vec<Frame>, FrameError> {
    Frames::new(message).collect()
}

/// Encodes `frames` back to back into one message.
pub fn encode_message<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> BytesMut {
    let mut out = BytesMut::new();
    for frame in frames {
        frame.encode(&mut out);
    }
    out
}

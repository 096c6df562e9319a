//! The fixed 10-byte frame header (spec/frames.md#frame-header).

use bytes::BufMut;

use super::{FrameError, FrameType, MIN_FRAGMENT};
use crate::id::SessionId;

/// Bytes in every frame header.
pub const HEADER_LEN: usize = 10;
/// The protocol version carried in the high nibble of every header's first byte.
pub const VERSION: u8 = 1;

/// DATA flag: this frame completes a message.
pub const FLAG_END: u8 = 0x01;
/// DATA flag: the sender will send no more messages on this session (half-close).
pub const FLAG_FIN: u8 = 0x02;

/// A validated frame header: every rule that can be checked without the payload holds.
///
/// Parsing the header alone lets a receiver check a frame's declared length against its
/// limits before it looks at, buffers or copies any payload (spec/frames.md#limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's type.
    pub frame_type: FrameType,
    /// Type-specific flags; reserved bits are guaranteed zero.
    pub flags: u8,
    /// The session the frame belongs to (0 for connection frames).
    pub session_id: SessionId,
    /// Payload length in bytes, not counting the header.
    pub len: u32,
}

type RawHeader = (u8, u8, u32, u32);

/// The four header fields: nom's complete `take` splits off the ten header bytes (the one
/// check a fixed-width header needs), then the fields are read at fixed offsets.
///
/// Field-by-field nom parsers re-check the remaining length per field and, across crates,
/// call out for each one, which made header decoding several times slower than the loads
/// themselves (benches/codec.rs, `header_decode`).
#[inline(always)]
fn raw_header(input: &[u8]) -> Option<RawHeader> {
    let taken: nom::IResult<&[u8], &[u8]> = nom::bytes::complete::take(HEADER_LEN)(input);
    let (_, header) = taken.ok()?;
    let &[ver_type, flags, s0, s1, s2, s3, l0, l1, l2, l3] = header.first_chunk::<HEADER_LEN>()?;
    Some((
        ver_type,
        flags,
        u32::from_be_bytes([s0, s1, s2, s3]),
        u32::from_be_bytes([l0, l1, l2, l3]),
    ))
}

impl Header {
    /// Parses and validates the header at the start of `input`.
    ///
    /// Checks, in order: that ten bytes are present, the version, the frame type, reserved
    /// flags, the session scope (control frames on 0, session frames elsewhere), the length
    /// bounds of the type, and the DATA flag combinations. The payload is not examined.
    #[inline(always)]
    pub fn parse(input: &[u8]) -> Result<Header, FrameError> {
        let (ver_type, flags, session_id, len) =
            raw_header(input).ok_or(FrameError::TruncatedHeader {
                available: input.len(),
            })?;
        let version = ver_type >> 4;
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion { version });
        }
        let frame_type =
            FrameType::from_nibble(ver_type & 0x0f).ok_or(FrameError::UnknownType {
                frame_type: ver_type & 0x0f,
            })?;
        let header = Header {
            frame_type,
            flags,
            session_id: SessionId(session_id),
            len,
        };
        header.validate()?;
        Ok(header)
    }

    #[inline(always)]
    fn validate(&self) -> Result<(), FrameError> {
        let frame_type = self.frame_type;
        let reserved = self.flags & !frame_type.defined_flags();
        if reserved != 0 {
            return Err(FrameError::ReservedFlags {
                frame_type,
                flags: self.flags,
            });
        }
        if frame_type.is_connection_frame() != self.session_id.is_control() {
            return Err(FrameError::WrongSession {
                frame_type,
                session_id: self.session_id,
            });
        }
        let (min, max) = frame_type.len_bounds();
        if self.len < min || self.len > max {
            return Err(FrameError::BadLength {
                frame_type,
                len: self.len,
                min,
                max,
            });
        }
        if frame_type == FrameType::Data {
            let end = self.flags & FLAG_END != 0;
            let fin = self.flags & FLAG_FIN != 0;
            // spec/frames.md#data: an empty frame must end a message or the session, and a
            // frame with payload cannot end the session while leaving its message unfinished.
            let empty_without_purpose = self.len == 0 && !end && !fin;
            let fin_leaves_message_open = self.len > 0 && fin && !end;
            if empty_without_purpose || fin_leaves_message_open {
                return Err(FrameError::InvalidFlags {
                    frame_type,
                    flags: self.flags,
                });
            }
            // spec/frames.md#data: fragments that do not end a message carry at least
            // MIN_FRAGMENT bytes, so a message costs at most len / 1024 + 1 frames.
            if !end && !fin && self.len < MIN_FRAGMENT {
                return Err(FrameError::BadLength {
                    frame_type,
                    len: self.len,
                    min: MIN_FRAGMENT,
                    max: u32::MAX,
                });
            }
        }
        Ok(())
    }

    /// Writes the header in wire order.
    #[inline]
    pub fn encode<B: BufMut>(&self, out: &mut B) {
        // One 10-byte write rather than four: each `put_*` on a `BytesMut` is a call.
        let [s0, s1, s2, s3] = self.session_id.0.to_be_bytes();
        let [l0, l1, l2, l3] = self.len.to_be_bytes();
        let ver_type = (VERSION << 4) | self.frame_type as u8;
        out.put_slice(&[ver_type, self.flags, s0, s1, s2, s3, l0, l1, l2, l3]);
    }
}

//! CLOSE, RESET and CONN_CLOSE: a code, a retry hint and a short reason (spec/frames.md#close).

use bytes::{BufMut, BytesMut};

use super::reader::Reader;
use super::{FrameError, FrameType, Text};
use crate::code::CloseCode;
use crate::id::SessionId;

/// Longest reason, in bytes: what fits in a WebSocket close frame beside its code.
pub const MAX_REASON_LEN: usize = 123;

/// Reads `code u16 | retry_after_ms u32 | reason`, checking the code and the reason.
pub(super) fn decode_close_fields(
    r: &mut Reader,
    frame_type: FrameType,
) -> Result<(CloseCode, u32, Text), FrameError> {
    let code = CloseCode(r.u16("code")?);
    if !code.is_valid_on_wire() {
        return Err(FrameError::InvalidValue {
            frame_type,
            field: "code",
            value: u64::from(code.0),
        });
    }
    let retry_after_ms = r.u32("retry_after_ms")?;
    let reason = decode_reason(r, frame_type)?;
    Ok((code, retry_after_ms, reason))
}

/// The rest of the payload as a UTF-8 reason (the header already bounded its length).
pub(super) fn decode_reason(r: &mut Reader, frame_type: FrameType) -> Result<Text, FrameError> {
    Text::from_utf8(r.rest()).ok_or(FrameError::InvalidUtf8 {
        frame_type,
        field: "reason",
    })
}

/// Ends one session: CLOSE (graceful) or RESET (abort, or refusal of an OPEN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClose {
    /// The session.
    pub session_id: SessionId,
    /// Why (spec/close-codes.md).
    pub code: CloseCode,
    /// Milliseconds to wait before retrying; 0 for no hint.
    pub retry_after_ms: u32,
    /// Human-readable detail, at most 123 bytes; never secrets.
    pub reason: Text,
}

impl SessionClose {
    /// A close with no retry hint; `reason` is cut to [`MAX_REASON_LEN`].
    pub fn new(session_id: SessionId, code: CloseCode, reason: &str) -> Self {
        SessionClose {
            session_id,
            code,
            retry_after_ms: 0,
            reason: Text::truncated(reason, MAX_REASON_LEN),
        }
    }

    pub(super) fn decode(session_id: SessionId, r: &mut Reader) -> Result<Self, FrameError> {
        // CLOSE and RESET share this layout; errors name whichever the header said.
        let (code, retry_after_ms, reason) = decode_close_fields(r, r.frame_type())?;
        Ok(SessionClose {
            session_id,
            code,
            retry_after_ms,
            reason,
        })
    }

    pub(super) fn payload_len(&self) -> usize {
        6usize.saturating_add(self.reason.len())
    }

    pub(super) fn encode_payload(&self, out: &mut BytesMut) {
        encode_close_fields(out, self.code, self.retry_after_ms, &self.reason);
    }
}

pub(super) fn encode_close_fields(
    out: &mut BytesMut,
    code: CloseCode,
    retry_after_ms: u32,
    reason: &Text,
) {
    out.put_u16(code.0);
    out.put_u32(retry_after_ms);
    out.extend_from_slice(reason.as_bytes());
}

/// Closes the whole connection. The sender then closes the WebSocket with the same code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnClose {
    /// Why (spec/close-codes.md).
    pub code: CloseCode,
    /// Milliseconds to wait before reconnecting; 0 for no hint.
    pub retry_after_ms: u32,
    /// Human-readable detail, at most 123 bytes; never secrets.
    pub reason: Text,
}

impl ConnClose {
    /// A close with no retry hint; `reason` is cut to [`MAX_REASON_LEN`].
    pub fn new(code: CloseCode, reason: &str) -> Self {
        ConnClose {
            code,
            retry_after_ms: 0,
            reason: Text::truncated(reason, MAX_REASON_LEN),
        }
    }

    pub(super) fn decode(r: &mut Reader) -> Result<Self, FrameError> {
        let (code, retry_after_ms, reason) = decode_close_fields(r, FrameType::ConnClose)?;
        Ok(ConnClose {
            code,
            retry_after_ms,
            reason,
        })
    }

    pub(super) fn payload_len(&self) -> usize {
        6usize.saturating_add(self.reason.len())
    }

    pub(super) fn encode_payload(&self, out: &mut BytesMut) {
        encode_close_fields(out, self.code, self.retry_after_ms, &self.reason);
    }
}

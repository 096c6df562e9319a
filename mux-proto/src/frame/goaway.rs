//! GOAWAY: graceful shutdown with the last session the sender will serve (spec/frames.md#goaway).

use bytes::{BufMut, BytesMut};

use super::close::decode_reason;
use super::reader::Reader;
use super::{FrameError, FrameType, Text};
use crate::code::CloseCode;
use crate::id::SessionId;

/// Announces that the sender is shutting down: sessions the receiver opened with IDs up to
/// `last_session_id` will be served to completion, later ones were refused unprocessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    /// The highest peer-opened session ID the sender accepted or will process.
    pub last_session_id: SessionId,
    /// Why (usually 1001 GOING_AWAY).
    pub code: CloseCode,
    /// Human-readable detail, at most 123 bytes.
    pub reason: Text,
}

impl GoAway {
    pub(super) fn decode(r: &mut Reader) -> Result<GoAway, FrameError> {
        let last_session_id = SessionId(r.u32("last_session_id")?);
        let code = CloseCode(r.u16("code")?);
        if !code.is_valid_on_wire() {
            return Err(FrameError::InvalidValue {
                frame_type: FrameType::GoAway,
                field: "code",
                value: u64::from(code.0),
            });
        }
        let reason = decode_reason(r, FrameType::GoAway)?;
        Ok(GoAway {
            last_session_id,
            code,
            reason,
        })
    }

    pub(super) fn payload_len(&self) -> usize {
        6usize.saturating_add(self.reason.len())
    }

    pub(super) fn encode_payload(&self, out: &mut BytesMut) {
        out.put_u32(self.last_session_id.0);
        out.put_u16(self.code.0);
        out.extend_from_slice(self.reason.as_bytes());
    }
}

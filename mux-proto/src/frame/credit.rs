//! CREDIT: more receive window for a session, in messages and bytes (spec/frames.md#credit).

use bytes::{BufMut, BytesMut};

use super::reader::Reader;
use super::{FrameError, FrameType};
use crate::id::SessionId;

pub(super) const CREDIT_LEN: usize = 8;

/// Adds to the sender's window on a session. Both units bound what the receiver holds:
/// bytes bound its memory, messages bound the undelivered events it must track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// The session.
    pub session_id: SessionId,
    /// Additional whole messages the peer may start.
    pub messages: u32,
    /// Additional payload bytes the peer may send.
    pub bytes: u32,
}

impl Credit {
    pub(super) fn decode(session_id: SessionId, r: &mut Reader) -> Result<Credit, FrameError> {
        let messages = r.u32("messages")?;
        let bytes = r.u32("bytes")?;
        // spec/frames.md#credit: a grant of nothing is an error (it only costs the receiver).
        if messages == 0 && bytes == 0 {
            return Err(FrameError::InvalidValue {
                frame_type: FrameType::Credit,
                field: "credit",
                value: 0,
            });
        }
        Ok(Credit {
            session_id,
            messages,
            bytes,
        })
    }

    pub(super) fn encode_payload(&self, out: &mut BytesMut) {
        out.put_u32(self.messages);
        out.put_u32(self.bytes);
    }
}

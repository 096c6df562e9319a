//! DATA: message bytes on a session (spec/frames.md#data).

use bytes::Bytes;

use super::{Header, FLAG_END, FLAG_FIN};
use crate::id::SessionId;

/// A fragment of a message. A message is the payloads of consecutive DATA frames on one
/// session up to and including the one with `end` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// The session.
    pub session_id: SessionId,
    /// This frame completes a message.
    pub end: bool,
    /// The sender sends no more messages on this session (half-close).
    pub fin: bool,
    /// The fragment, zero-copy from the received message.
    pub payload: Bytes,
}

impl Data {
    pub(super) fn decode(header: &Header, payload: Bytes) -> Data {
        Data {
            session_id: header.session_id,
            end: header.flags & FLAG_END != 0,
            fin: header.flags & FLAG_FIN != 0,
            payload,
        }
    }

    pub(super) fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.end {
            flags |= FLAG_END;
        }
        if self.fin {
            flags |= FLAG_FIN;
        }
        flags
    }
}

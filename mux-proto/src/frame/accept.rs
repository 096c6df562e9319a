//! ACCEPT: the acceptor's grant for a session (spec/frames.md#accept).

use bytes::{BufMut, BytesMut};

use super::reader::Reader;
use super::{FrameError, FrameType};
use crate::id::SessionId;

pub(super) const ACCEPT_LEN: usize = 1 + 4 + 4 * 4;

/// What each side may do on a session, as granted by the acceptor.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

impl Permissions {
    /// The opener may send DATA.
    pub const SEND: Permissions = Permissions(0x01);
    /// The acceptor will send DATA to the opener.
    pub const RECEIVE: Permissions = Permissions(0x02);
    /// Both directions.
    pub const BOTH: Permissions = Permissions(0x03);
    /// Neither direction: a session that only exists to be closed or to hold presence.
    pub const NONE: Permissions = Permissions(0);

    /// From the wire byte, or `None` if a reserved bit is set.
    pub fn from_bits(bits: u8) -> Option<Permissions> {
        (bits & !Self::BOTH.0 == 0).then_some(Permissions(bits))
    }

    /// The wire byte.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether every permission in `other` is in `self`.
    pub fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    /// The opener may send DATA.
    pub fn opener_may_send(self) -> bool {
        self.contains(Self::SEND)
    }

    /// The acceptor may send DATA.
    pub fn acceptor_may_send(self) -> bool {
        self.contains(Self::RECEIVE)
    }
}

impl std::fmt::Debug for Permissions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let send = if self.opener_may_send() { "SEND" } else { "-" };
        let recv = if self.acceptor_may_send() {
            "RECEIVE"
        } else {
            "-"
        };
        write!(f, "Permissions({send}|{recv})")
    }
}

/// Token-bucket rates a receiver enforces on the sender of a session; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    /// Sustained messages per second.
    pub messages_per_sec: u32,
    /// Sustained bytes per second.
    pub bytes_per_sec: u32,
    /// Messages that may be sent at once after an idle period.
    pub burst_messages: u32,
    /// Bytes that may be sent at once after an idle period.
    pub burst_bytes: u32,
}

/// Accepts a session: the permissions and limits the acceptor will enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept {
    /// The session being accepted (opened by the peer).
    pub session_id: SessionId,
    /// Directions that may carry DATA.
    pub permissions: Permissions,
    /// Largest message the acceptor accepts from the opener, in bytes (at least 1).
    pub max_message_size: u32,
    /// Rates the acceptor enforces on the opener's DATA.
    pub rate: RateLimits,
}

impl Accept {
    pub(super) fn decode(session_id: SessionId, r: &mut Reader) -> Result<Accept, FrameError> {
        let bits = r.u8("permissions")?;
        let permissions = Permissions::from_bits(bits).ok_or(FrameError::InvalidValue {
            frame_type: FrameType::Accept,
            field: "permissions",
            value: u64::from(bits),
        })?;
        let max_message_size = r.u32("max_message_size")?;
        if max_message_size == 0 {
            return Err(FrameError::InvalidValue {
                frame_type: FrameType::Accept,
                field: "max_message_size",
                value: 0,
            });
        }
        let rate = RateLimits {
            messages_per_sec: r.u32("messages_per_sec")?,
            bytes_per_sec: r.u32("bytes_per_sec")?,
            burst_messages: r.u32("burst_messages")?,
            burst_bytes: r.u32("burst_bytes")?,
        };
        Ok(Accept {
            session_id,
            permissions,
            max_message_size,
            rate,
        })
    }

    pub(super) fn encode_payload(&self, out: &mut BytesMut) {
        out.put_u8(self.permissions.bits());
        out.put_u32(self.max_message_size);
        out.put_u32(self.rate.messages_per_sec);
        out.put_u32(self.rate.bytes_per_sec);
        out.put_u32(self.rate.burst_messages);
        out.put_u32(self.rate.burst_bytes);
    }
}

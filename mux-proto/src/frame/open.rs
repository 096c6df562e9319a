//! OPEN: a new session with its kind, credentials and requested limits (spec/frames.md#open).

use bytes::{BufMut, BytesMut};

use super::reader::Reader;
use super::{Credential, FrameError, FrameType, Text};
use crate::id::SessionId;

/// Bytes of OPEN's fixed fields: three u32 limits, the kind length and the auth length.
pub const OPEN_FIXED_LEN: usize = 4 + 4 + 4 + 1 + 2;
/// Longest kind (topic) an OPEN can carry.
pub const MAX_KIND_LEN: usize = u8::MAX as usize;
pub(super) const MAX_OPEN_LEN: usize = OPEN_FIXED_LEN + MAX_KIND_LEN + u16::MAX as usize;

/// The limits an opener asks for; the acceptor grants them, or less, in ACCEPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenRequest {
    /// Largest message the opener intends to send, in bytes (0: no preference).
    pub max_message_size: u32,
    /// Messages per second the opener intends to send (0: no preference).
    pub messages_per_sec: u32,
    /// Bytes per second the opener intends to send (0: no preference).
    pub bytes_per_sec: u32,
}

/// Opens a session. The receiver answers with ACCEPT, or RESET to refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The new session's ID (odd from clients, even from servers).
    pub session_id: SessionId,
    /// Requested limits.
    pub request: OpenRequest,
    /// What the session is for: a topic or service name, UTF-8, at most 255 bytes.
    pub kind: Text,
    /// Opaque credentials for this session, at most 65,535 bytes; redacted in `Debug`.
    pub auth: Credential,
}

impl Open {
    pub(super) fn decode(session_id: SessionId, r: &mut Reader) -> Result<Open, FrameError> {
        let request = OpenRequest {
            max_message_size: r.u32("max_message_size")?,
            messages_per_sec: r.u32("messages_per_sec")?,
            bytes_per_sec: r.u32("bytes_per_sec")?,
        };
        let kind_len = r.u8("kind_len")?;
        let kind = r.bytes(usize::from(kind_len), "kind")?;
        let kind = Text::from_utf8(kind).ok_or(FrameError::InvalidUtf8 {
            frame_type: FrameType::Open,
            field: "kind",
        })?;
        let auth_len = r.u16("auth_len")?;
        let auth = Credential::new(r.bytes(usize::from(auth_len), "auth")?);
        Ok(Open {
            session_id,
            request,
            kind,
            auth,
        })
    }

    pub(super) fn payload_len(&self) -> usize {
        OPEN_FIXED_LEN
            .saturating_add(self.kind.len())
            .saturating_add(self.auth.len())
    }

    pub(super) fn encode_payload(&self, out: &mut BytesMut) {
        out.put_u32(self.request.max_message_size);
        out.put_u32(self.request.messages_per_sec);
        out.put_u32(self.request.bytes_per_sec);
        // Constructors keep kind ≤ 255 and auth ≤ 65,535 bytes; saturate rather than wrap.
        out.put_u8(u8::try_from(self.kind.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.kind.as_bytes());
        out.put_u16(u16::try_from(self.auth.len()).unwrap_or(u16::MAX));
        out.extend_from_slice(self.auth.expose());
    }
}

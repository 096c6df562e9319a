//! Decoding errors. Each names the frame type and field, and maps to one close code.

use crate::code::CloseCode;
use crate::id::SessionId;

use super::FrameType;

/// Why a message could not be decoded (spec/frames.md#errors).
///
/// Every variant is a connection error: after a malformed frame the rest of the message,
/// and the peer's framing, cannot be trusted. [`FrameError::close_code`] gives the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A binary message with no bytes; a message carries at least one frame.
    #[error("empty message: a message carries at least one frame")]
    EmptyMessage,
    /// Fewer than ten bytes remain where a header starts.
    #[error("truncated header: {available} of 10 bytes")]
    TruncatedHeader {
        /// Bytes that remained.
        available: usize,
    },
    /// The header's version nibble is not 1.
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The header's type nibble is not assigned.
    #[error("unknown frame type {frame_type:#x}")]
    UnknownType {
        /// The type nibble found.
        frame_type: u8,
    },
    /// A flag bit the frame type does not define is set.
    #[error("{} frame has reserved flag bits set in {flags:#04x}", frame_type.name())]
    ReservedFlags {
        /// The frame type.
        frame_type: FrameType,
        /// The whole flags byte.
        flags: u8,
    },
    /// Defined flags in a combination the spec forbids (DATA only).
    #[error("{} frame has an invalid flag combination {flags:#04x}", frame_type.name())]
    InvalidFlags {
        /// The frame type.
        frame_type: FrameType,
        /// The whole flags byte.
        flags: u8,
    },
    /// A connection frame on a session, or a session frame on session 0.
    #[error("{} frame may not use session {session_id}", frame_type.name())]
    WrongSession {
        /// The frame type.
        frame_type: FrameType,
        /// The session ID found.
        session_id: SessionId,
    },
    /// The declared payload length is outside the bounds of the frame type.
    #[error("{} frame length {len} is outside {min}..={max}", frame_type.name())]
    BadLength {
        /// The frame type.
        frame_type: FrameType,
        /// The declared length.
        len: u32,
        /// Smallest valid length.
        min: u32,
        /// Largest valid length.
        max: u32,
    },
    /// The declared payload is longer than the rest of the message: a frame never spans messages.
    #[error("{} frame declares {declared} payload bytes but {available} remain", frame_type.name())]
    TruncatedPayload {
        /// The frame type.
        frame_type: FrameType,
        /// The declared length.
        declared: u32,
        /// Bytes that remained after the header.
        available: usize,
    },
    /// The payload ended inside a field.
    #[error("{} frame is truncated in field {field}", frame_type.name())]
    TruncatedField {
        /// The frame type.
        frame_type: FrameType,
        /// The field being read.
        field: &'static str,
    },
    /// Bytes remain after the last field of the payload.
    #[error("{} frame has {extra} bytes after its last field", frame_type.name())]
    TrailingBytes {
        /// The frame type.
        frame_type: FrameType,
        /// How many bytes remained.
        extra: usize,
    },
    /// A text field is not valid UTF-8.
    #[error("{} frame field {field} is not valid UTF-8", frame_type.name())]
    InvalidUtf8 {
        /// The frame type.
        frame_type: FrameType,
        /// The field.
        field: &'static str,
    },
    /// A field holds a value the spec forbids.
    #[error("{} frame field {field} has invalid value {value}", frame_type.name())]
    InvalidValue {
        /// The frame type.
        frame_type: FrameType,
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// A SETTINGS frame names the same setting twice.
    #[error("SETTINGS frame repeats setting {id:#06x}")]
    DuplicateSetting {
        /// The repeated setting identifier.
        id: u16,
    },
}

impl FrameError {
    /// The connection close code this error calls for.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::InvalidUtf8 { .. } => CloseCode::INVALID_DATA,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// The variant's name, as used by `spec/vectors/`.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::EmptyMessage => "EmptyMessage",
            FrameError::TruncatedHeader { .. } => "TruncatedHeader",
            FrameError::UnsupportedVersion { .. } => "UnsupportedVersion",
            FrameError::UnknownType { .. } => "UnknownType",
            FrameError::ReservedFlags { .. } => "ReservedFlags",
            FrameError::InvalidFlags { .. } => "InvalidFlags",
            FrameError::WrongSession { .. } => "WrongSession",
            FrameError::BadLength { .. } => "BadLength",
            FrameError::TruncatedPayload { .. } => "TruncatedPayload",
            FrameError::TruncatedField { .. } => "TruncatedField",
            FrameError::TrailingBytes { .. } => "TrailingBytes",
            FrameError::InvalidUtf8 { .. } => "InvalidUtf8",
            FrameError::InvalidValue { .. } => "InvalidValue",
            FrameError::DuplicateSetting { .. } => "DuplicateSetting",
        }
    }

    /// The frame type the error names, where it names one.
    pub fn frame_type(&self) -> Option<FrameType> {
        match self {
            FrameError::ReservedFlags { frame_type, .. }
            | FrameError::InvalidFlags { frame_type, .. }
            | FrameError::WrongSession { frame_type, .. }
            | FrameError::BadLength { frame_type, .. }
            | FrameError::TruncatedPayload { frame_type, .. }
            | FrameError::TruncatedField { frame_type, .. }
            | FrameError::TrailingBytes { frame_type, .. }
            | FrameError::InvalidUtf8 { frame_type, .. }
            | FrameError::InvalidValue { frame_type, .. } => Some(*frame_type),
            FrameError::DuplicateSetting { .. } => Some(FrameType::Settings),
            _ => None,
        }
    }

    /// The field the error names, where it names one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            FrameError::TruncatedField { field, .. }
            | FrameError::InvalidUtf8 { field, .. }
            | FrameError::InvalidValue { field, .. } => Some(field),
            _ => None,
        }
    }
}

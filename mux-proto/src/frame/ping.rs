//! PING and PONG: an opaque 8-byte payload echoed back (spec/frames.md#ping).

/// Payload length of PING and PONG.
pub const PING_LEN: usize = 8;

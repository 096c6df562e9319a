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

/// The first two header bytes as one little-endian `u16` (the first byte in the low half,
/// the flags in the high half), the session ID and the length.
type RawHeader = (u16, u32, u32);

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
        u16::from_le_bytes([ver_type, flags]),
        u32::from_be_bytes([s0, s1, s2, s3]),
        u32::from_be_bytes([l0, l1, l2, l3]),
    ))
}

/// The session scope as the high half of a range check's key: all ones on session 0
/// (connection frames), zero on any other session, computed as
/// `(session_id - 1) & SCOPE_MASK` in 64 bits without a comparison.
const SCOPE_MASK: u64 = 0xffff_ffff_0000_0000;
/// The high half of a rule's `low` for session frames.
const SCOPE_SESSION: u64 = 0;
/// The high half of a rule's `low` for connection frames.
const SCOPE_CONNECTION: u64 = SCOPE_MASK;
/// The high half of a rule's `low` when no header with this first byte and these flags is
/// valid, whatever its session and length: it matches neither scope.
const SCOPE_NEVER: u64 = 2 << 32;

/// The flag bits the tables are split by; every higher bit is reserved for every type.
const TABLE_FLAGS: u8 = FLAG_END | FLAG_FIN;

/// Table rows: one for each first header byte (version and type nibbles) and each flags
/// byte that sets no reserved bit, at the little-endian value of the first two header bytes
/// (`first_byte | flags << 8`). A flags byte with a higher bit set indexes past the end.
const ROWS: usize = (TABLE_FLAGS as usize + 1) << 8;

/// What every first byte and flag pair allows, as one 64-bit range check per header.
///
/// A header is valid exactly when `key - low[row] <= span[row]` in wrapping arithmetic,
/// where `key = len | scope(session_id)` and `low = min | scope_of_the_type`. Equal scopes
/// leave the high half zero, so the low half checks `min <= len <= max`. A wrong scope (or
/// [`SCOPE_NEVER`]) leaves the high half nonzero, or, when `len < min` borrows from it,
/// leaves a low half of `2^32 + len - min`, which exceeds `max - min` since `max < 2^32`.
///
/// So a valid header is recognised with one comparison and no branch on its type,
/// version, flags or scope; only a header that fails takes the rule-by-rule path that
/// names the broken rule. Separate tables (rather than one table of rows) let each load
/// index by the first two header bytes directly. The type and the flags byte come from
/// tables too: the flags byte is `row >> 8`, but on this path a load is cheaper than the
/// copy and shift that extract it (one instruction less per header in benches/codec.rs
/// under callgrind, where the loop is bound by ALU throughput, not loads). Valid traffic
/// reads only the 14 rows of each table that hold version-1 types with their defined flags.
struct HeaderRules {
    low: [u64; ROWS],
    span: [u32; ROWS],
    frame_type: [FrameType; ROWS],
    flags: [u8; ROWS],
}

// Evaluated only at compile time: an overflow or a bad index fails the build.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
static HEADER_RULES: HeaderRules = {
    let mut rules = HeaderRules {
        low: [SCOPE_NEVER; ROWS],
        span: [0; ROWS],
        frame_type: [FrameType::Data; ROWS],
        flags: [0; ROWS],
    };
    let mut i = 0;
    while i < FrameType::ALL.len() {
        let frame_type = FrameType::ALL[i];
        let first_byte = ((VERSION << 4) | frame_type as u8) as usize;
        let mut flags = 0;
        while flags <= TABLE_FLAGS {
            let row = first_byte | (flags as usize) << 8;
            rules.frame_type[row] = frame_type;
            rules.flags[row] = flags;
            // A flag the type does not define leaves the row SCOPE_NEVER.
            if flags & !frame_type.defined_flags() == 0 {
                let (mut min, mut max) = frame_type.len_bounds();
                let end = flags & FLAG_END != 0;
                let fin = flags & FLAG_FIN != 0;
                if matches!(frame_type, FrameType::Data) && !end && !fin {
                    // A fragment: at least MIN_FRAGMENT bytes (which rules out empty frames).
                    min = MIN_FRAGMENT;
                } else if matches!(frame_type, FrameType::Data) && fin && !end {
                    // A bare FIN carries no payload.
                    max = 0;
                }
                let scope = if frame_type.is_connection_frame() {
                    SCOPE_CONNECTION
                } else {
                    SCOPE_SESSION
                };
                rules.low[row] = min as u64 | scope;
                rules.span[row] = max - min;
            }
            flags += 1;
        }
        i += 1;
    }
    rules
};

impl Header {
    /// Parses and validates the header at the start of `input`.
    ///
    /// Checks, in order: that ten bytes are present, the version, the frame type, reserved
    /// flags, the session scope (control frames on 0, session frames elsewhere), the length
    /// bounds of the type, and the DATA flag combinations. The payload is not examined.
    /// The error names the first rule broken in that order.
    ///
    /// A valid header costs four table loads and one comparison; only a header that
    /// breaks a rule goes through the slower rule-by-rule checks that name it.
    #[inline(always)]
    pub fn parse(input: &[u8]) -> Result<Header, FrameError> {
        match raw_header(input).and_then(Header::accept_valid) {
            Some(header) => Ok(header),
            // Only an error leaves this arm. Were the rule path's `Ok` passed on, the
            // caller's code after the call could not tell it apart from an error (both
            // share the `Result`'s niche) and would join it to the table path: a decoding
            // loop then keeps its state in call-preserved registers and pays for the join on
            // every valid header (benches/codec.rs, `header_decode`).
            None => match Header::parse_checked(input) {
                Err(error) => Err(error),
                Ok(header) => Err(Header::disagreement(header)),
            },
        }
    }

    /// The error for a header the table turned down but the rules accept, which the tests
    /// show never happens: every first byte, flags byte, session scope and boundary length
    /// gets the same answer from both, and the `decode_bytes` fuzz target compares them on
    /// arbitrary bytes. Should it happen, the header stays rejected (the table is the
    /// stricter reading) and debug builds stop.
    ///
    /// Inlined, so that the caller sees this error's type constant: an error made out of
    /// line could, for all the caller knows, be the `Ok` niche, and would join the paths.
    #[inline(always)]
    fn disagreement(header: Header) -> FrameError {
        debug_assert!(false, "header table and rules disagree on {header:?}");
        FrameError::InvalidValue {
            frame_type: header.frame_type,
            field: "header",
            value: u64::from(header.len),
        }
    }

    /// The header if every rule holds, from four table loads and one comparison.
    #[inline(always)]
    fn accept_valid((type_and_flags, session_id, len): RawHeader) -> Option<Header> {
        let row = usize::from(type_and_flags);
        let rules = &HEADER_RULES;
        // Out of range exactly when a reserved flag bit is set.
        let low = *rules.low.get(row)?;
        let span = *rules.span.get(row)?;
        let scope = u64::from(session_id).wrapping_sub(1) & SCOPE_MASK;
        let key = u64::from(len) | scope;
        if key.wrapping_sub(low) > u64::from(span) {
            return None;
        }
        Some(Header {
            frame_type: *rules.frame_type.get(row)?,
            flags: *rules.flags.get(row)?,
            session_id: SessionId(session_id),
            len,
        })
    }

    /// Rule-by-rule validation, naming the first rule broken: the path for headers that
    /// [`Header::accept_valid`] turns down.
    #[cold]
    #[inline(never)]
    pub(crate) fn parse_checked(input: &[u8]) -> Result<Header, FrameError> {
        let (type_and_flags, session_id, len) =
            raw_header(input).ok_or(FrameError::TruncatedHeader {
                available: input.len(),
            })?;
        let [ver_type, flags] = type_and_flags.to_le_bytes();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length at which some rule changes its answer, and its neighbours.
    fn boundary_lengths() -> Vec<u32> {
        let mut lens = vec![
            0,
            1,
            MIN_FRAGMENT - 1,
            MIN_FRAGMENT,
            MIN_FRAGMENT + 1,
            u32::MAX,
        ];
        for frame_type in FrameType::ALL {
            let (min, max) = frame_type.len_bounds();
            for len in [min, max] {
                lens.extend([len.saturating_sub(1), len, len.saturating_add(1)]);
            }
        }
        lens.sort_unstable();
        lens.dedup();
        lens
    }

    /// The table path accepts exactly the headers the rule-by-rule path accepts, with the
    /// same fields: every first byte, every flags byte, both session scopes and every
    /// boundary length.
    #[test]
    fn table_path_agrees_with_rule_by_rule_path() {
        let lens = boundary_lengths();
        let mut accepted_types = Vec::new();
        for ver_type in 0..=u8::MAX {
            for flags in 0..=u8::MAX {
                for session_id in [0, 1, 2, u32::MAX] {
                    for &len in &lens {
                        let header = Header {
                            frame_type: FrameType::Data,
                            flags,
                            session_id: SessionId(session_id),
                            len,
                        };
                        let mut bytes = Vec::with_capacity(HEADER_LEN);
                        header.encode(&mut bytes);
                        bytes[0] = ver_type;
                        let checked = Header::parse_checked(&bytes).ok();
                        let fast = raw_header(&bytes).and_then(Header::accept_valid);
                        assert_eq!(fast, checked, "header {bytes:02x?}");
                        assert_eq!(Header::parse(&bytes), Header::parse_checked(&bytes));
                        if let Some(h) = fast {
                            if !accepted_types.contains(&h.frame_type) {
                                accepted_types.push(h.frame_type);
                            }
                        }
                    }
                }
            }
        }
        // Every type was accepted somewhere, so the comparison was not vacuous.
        assert_eq!(accepted_types.len(), FrameType::ALL.len());
    }

    proptest::proptest! {
        /// Between the boundary lengths and sessions of the exhaustive test: any ten bytes
        /// (first two bytes biased towards valid ones) get the same answer from both paths.
        #[test]
        fn table_path_agrees_on_any_header(
            first in proptest::prop_oneof![0x10u8..=0x1a, proptest::num::u8::ANY],
            flags in proptest::prop_oneof![0u8..=3, proptest::num::u8::ANY],
            session_id in proptest::prop_oneof![0u32..=2, proptest::num::u32::ANY],
            len in proptest::prop_oneof![0u32..=16, 0..=2 * MIN_FRAGMENT, proptest::num::u32::ANY],
        ) {
            let mut bytes = vec![first, flags];
            bytes.extend(session_id.to_be_bytes());
            bytes.extend(len.to_be_bytes());
            let fast = raw_header(&bytes).and_then(Header::accept_valid);
            proptest::prop_assert_eq!(fast, Header::parse_checked(&bytes).ok());
        }
    }

    #[test]
    fn short_input_is_a_truncated_header() {
        for len in 0..HEADER_LEN {
            let bytes = [0x10u8; HEADER_LEN];
            assert_eq!(
                Header::parse(&bytes[..len]),
                Err(FrameError::TruncatedHeader { available: len })
            );
        }
    }
}

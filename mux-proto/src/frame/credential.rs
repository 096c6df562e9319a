//! Per-session credentials (OPEN's `auth` field) kept as zero-copy `Bytes` that never print.

use std::fmt;

use bytes::Bytes;

/// Opaque per-session credentials, as carried by OPEN (spec/frames.md#open).
///
/// Its `Debug` shows only the length, so a frame, an event or an authorization request can
/// be logged whole without leaking a token (spec/sessions.md#security-considerations).
/// Read the bytes with [`expose`](Credential::expose), only to verify them. Equality runs in
/// time that depends on the lengths alone, not on where two credentials first differ.
#[derive(Clone, Default)]
pub struct Credential(Bytes);

impl Credential {
    /// No credentials.
    pub const EMPTY: Credential = Credential(Bytes::new());

    /// Wraps `bytes` without copying.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Credential(bytes.into())
    }

    /// Wraps static bytes without copying.
    pub const fn from_static(bytes: &'static [u8]) -> Self {
        Credential(Bytes::from_static(bytes))
    }

    /// The secret bytes; use them only to verify, never to log.
    pub fn expose(&self) -> &Bytes {
        &self.0
    }

    /// The secret bytes, by value (for a verifier that keeps them).
    pub fn into_exposed(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no credentials.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential(<redacted, {} bytes>)", self.0.len())
    }
}

impl PartialEq for Credential {
    fn eq(&self, other: &Self) -> bool {
        // Every byte is compared, so the time taken does not tell how long a prefix matched.
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl Eq for Credential {}

impl From<Bytes> for Credential {
    fn from(bytes: Bytes) -> Self {
        Credential(bytes)
    }
}

impl From<Vec<u8>> for Credential {
    fn from(bytes: Vec<u8>) -> Self {
        Credential(bytes.into())
    }
}

impl From<&'static [u8]> for Credential {
    fn from(bytes: &'static [u8]) -> Self {
        Credential::from_static(bytes)
    }
}

impl From<&'static str> for Credential {
    fn from(s: &'static str) -> Self {
        Credential::from_static(s.as_bytes())
    }
}

impl From<String> for Credential {
    fn from(s: String) -> Self {
        Credential(s.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_length_only() {
        let c = Credential::from_static(b"hunter2-secret");
        assert_eq!(format!("{c:?}"), "Credential(<redacted, 14 bytes>)");
        assert_eq!(format!("{c:#?}"), "Credential(<redacted, 14 bytes>)");
    }

    #[test]
    fn equality_compares_the_bytes() {
        assert_eq!(Credential::from("abc"), Credential::new(b"abc".to_vec()));
        assert_ne!(Credential::from("abc"), Credential::from("abd"));
        assert_ne!(Credential::from("abc"), Credential::from("abcd"));
        assert_eq!(Credential::EMPTY, Credential::default());
    }
}

//! UTF-8 text fields (session kind, close reasons) kept as zero-copy `Bytes`.

use std::fmt;

use bytes::Bytes;

/// Bytes known to be valid UTF-8, shared with the message they were decoded from.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Text(Bytes);

impl Text {
    /// An empty text.
    pub const EMPTY: Text = Text(Bytes::new());

    /// Wraps `bytes` if they are valid UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Option<Text> {
        std::str::from_utf8(&bytes).ok()?;
        Some(Text(bytes))
    }

    /// Copies `s`, cut at the last character boundary at or below `max_len` bytes.
    pub fn truncated(s: &str, max_len: usize) -> Text {
        let mut end = s.len().min(max_len);
        while !s.is_char_boundary(end) {
            // is_char_boundary(0) is true, so this stops.
            end = end.saturating_sub(1);
        }
        Text(Bytes::copy_from_slice(
            s.get(..end).unwrap_or_default().as_bytes(),
        ))
    }

    /// Wraps a static string without copying.
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Validated at construction; the fallback is unreachable.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Text::from_static(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(Text::truncated("héllo", 2).as_str(), "h");
        assert_eq!(Text::truncated("héllo", 3).as_str(), "hé");
        assert_eq!(Text::truncated("abc", 10).as_str(), "abc");
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert!(Text::from_utf8(Bytes::from_static(&[0xff])).is_none());
        assert!(Text::from_utf8(Bytes::from_static(b"ok")).is_some());
    }
}

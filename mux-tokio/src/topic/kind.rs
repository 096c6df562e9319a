//! A topic session's kind: the topic, and for a resumption the position it resumes from
//! (spec/topics.md#resume-kind).

use std::fmt;

use super::{Epoch, StreamPosition};

/// The longest topic name, in bytes: a resumption adds at most 38 bytes (U+0000, 16 digits,
/// `:`, 20 digits) to fit OPEN's 255-byte kind (spec/topics.md, M-TOPIC-2).
pub const MAX_TOPIC_LEN: usize = 217;

/// What separates the topic from the position; no topic name contains it.
const SEPARATOR: char = '\0';

/// Why a kind names no topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KindError {
    /// U+0000 not followed by `epoch:offset` as spec/topics.md#resume-kind writes them.
    #[error("the kind carries a malformed resume position")]
    InvalidPosition,
    /// A topic name with U+0000, or longer than [`MAX_TOPIC_LEN`] (only when building a kind).
    #[error("a topic name has no U+0000 and is at most 217 bytes")]
    InvalidTopic,
}

/// A topic session's kind, parsed: the topic and, when the subscriber resumes, its position.
///
/// An authorizer decides on [`TopicKind::topic`]; the hub resumes from
/// [`TopicKind::resume`]. `Display` writes the kind back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicKind<'a> {
    /// The topic: the kind up to U+0000.
    pub topic: &'a str,
    /// Where the subscriber left off, if it resumes.
    pub resume: Option<StreamPosition>,
}

impl<'a> TopicKind<'a> {
    /// Parses an OPEN's kind. A kind without U+0000 is a fresh subscription to itself.
    pub fn parse(kind: &'a str) -> Result<Self, KindError> {
        let Some((topic, position)) = kind.split_once(SEPARATOR) else {
            return Ok(TopicKind {
                topic: kind,
                resume: None,
            });
        };
        let (epoch, offset) = position.split_once(':').ok_or(KindError::InvalidPosition)?;
        let epoch = Epoch::parse(epoch).ok_or(KindError::InvalidPosition)?;
        let canonical = offset == "0" || !offset.starts_with('0');
        if offset.is_empty() || !canonical || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(KindError::InvalidPosition);
        }
        let offset = offset.parse().map_err(|_| KindError::InvalidPosition)?;
        Ok(TopicKind {
            topic,
            resume: Some(StreamPosition { epoch, offset }),
        })
    }

    /// The kind that subscribes to `topic`, resuming from `resume` if given. Checks the
    /// topic name (M-TOPIC-2).
    pub fn new(topic: &'a str, resume: Option<StreamPosition>) -> Result<Self, KindError> {
        if topic.contains(SEPARATOR) || topic.len() > MAX_TOPIC_LEN {
            return Err(KindError::InvalidTopic);
        }
        Ok(TopicKind { topic, resume })
    }
}

impl fmt::Display for TopicKind<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.topic)?;
        if let Some(StreamPosition { epoch, offset }) = self.resume {
            write!(f, "{SEPARATOR}{epoch}:{offset}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print_back() {
        let fresh = TopicKind::parse("news").unwrap();
        assert_eq!(fresh.topic, "news");
        assert_eq!(fresh.resume, None);
        let kind = "news\u{0}00000000c0ffee00:42";
        let resumed = TopicKind::parse(kind).unwrap();
        assert_eq!(resumed.topic, "news");
        assert_eq!(
            resumed.resume,
            Some(StreamPosition::new(Epoch::new(0xc0ff_ee00), 42))
        );
        assert_eq!(resumed.to_string(), kind);
        let longest = "t".repeat(MAX_TOPIC_LEN);
        let max = StreamPosition::new(Epoch::new(u64::MAX), u64::MAX);
        let built = TopicKind::new(&longest, Some(max)).unwrap().to_string();
        assert_eq!(built.len(), 255, "the longest resumption fits OPEN's kind");
        assert_eq!(
            TopicKind::new(&format!("{longest}t"), None),
            Err(KindError::InvalidTopic)
        );
        assert_eq!(
            TopicKind::new("a\u{0}b", None),
            Err(KindError::InvalidTopic)
        );
    }

    #[test]
    fn malformed_positions_name_no_topic() {
        for bad in [
            "news\u{0}",
            "news\u{0}00000000c0ffee00",
            "news\u{0}00000000C0FFEE00:1",
            "news\u{0}0000000c0ffee00:1",
            "news\u{0}00000000c0ffee00:",
            "news\u{0}00000000c0ffee00:01",
            "news\u{0}00000000c0ffee00:+1",
            "news\u{0}00000000c0ffee00:18446744073709551616",
            "news\u{0}00000000c0ffee00:1\u{0}",
        ] {
            assert_eq!(
                TopicKind::parse(bad),
                Err(KindError::InvalidPosition),
                "{bad:?}"
            );
        }
    }
}

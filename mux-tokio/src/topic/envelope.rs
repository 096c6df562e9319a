//! What a topic session carries from server to subscriber (spec/topics.md): a one-byte tag,
//! then the body. Encoded once per publish and shared by every subscriber.

use bytes::{BufMut, Bytes, BytesMut};

/// A published message follows.
pub(crate) const TAG_MESSAGE: u8 = 0x00;
/// `u64` BE: messages dropped for this subscriber just before the next one (drop-oldest).
pub(crate) const TAG_GAP: u8 = 0x01;
/// A member joined: its id (UTF-8) follows.
pub(crate) const TAG_JOIN: u8 = 0x02;
/// A member left: its id (UTF-8) follows.
pub(crate) const TAG_LEAVE: u8 = 0x03;
/// Who is present: `u8` flags (bit 0: truncated), `u16` BE count, then per member `u8` length
/// and the id.
pub(crate) const TAG_SNAPSHOT: u8 = 0x04;

/// What a subscriber receives on a topic session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicEvent {
    /// A published message.
    Message(Bytes),
    /// This many messages were dropped (the subscriber was too slow) before the next one.
    Gap(u64),
    /// A member joined the topic.
    Join(String),
    /// A member left the topic.
    Leave(String),
    /// Who was present when this subscriber joined; `truncated` if the list was cut.
    Snapshot {
        /// Member ids.
        members: Vec<String>,
        /// More members were present than the snapshot carries.
        truncated: bool,
    },
}

pub(crate) fn message(payload: &[u8]) -> Bytes {
    tagged(TAG_MESSAGE, payload)
}

pub(crate) fn gap(count: u64) -> Bytes {
    tagged(TAG_GAP, &count.to_be_bytes())
}

pub(crate) fn join(member: &str) -> Bytes {
    tagged(TAG_JOIN, member.as_bytes())
}

pub(crate) fn leave(member: &str) -> Bytes {
    tagged(TAG_LEAVE, member.as_bytes())
}

pub(crate) fn snapshot<'a>(
    members: impl Iterator<Item = &'a str>,
    max: usize,
    total: usize,
) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(TAG_SNAPSHOT);
    let listed: Vec<&str> = members
        .filter(|m| m.len() <= usize::from(u8::MAX))
        .take(max)
        .collect();
    out.put_u8(u8::from(listed.len() < total));
    out.put_u16(u16::try_from(listed.len()).unwrap_or(u16::MAX));
    for m in listed.iter().take(usize::from(u16::MAX)) {
        out.put_u8(u8::try_from(m.len()).unwrap_or(u8::MAX));
        out.put_slice(m.as_bytes());
    }
    out.freeze()
}

/// Encodes any event, for a hub that feeds events it did not produce (a broker's).
pub(crate) fn encode(event: &TopicEvent) -> Bytes {
    match event {
        TopicEvent::Message(payload) => message(payload),
        TopicEvent::Gap(count) => gap(*count),
        TopicEvent::Join(member) => join(member),
        TopicEvent::Leave(member) => leave(member),
        TopicEvent::Snapshot { members, truncated } => {
            // A snapshot cut to `max` reports itself truncated when `total` exceeds what it
            // lists: one more than listed marks it so.
            let total = if *truncated {
                members.len().saturating_add(1)
            } else {
                members.len()
            };
            snapshot(members.iter().map(String::as_str), usize::MAX, total)
        }
    }
}

/// The count of a queued gap event, so that dropping it loses no accounting.
pub(crate) fn gap_count(item: &Bytes) -> Option<u64> {
    match item.split_first() {
        Some((&TAG_GAP, body)) => body.try_into().ok().map(u64::from_be_bytes),
        _ => None,
    }
}

fn tagged(tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len().saturating_add(1));
    out.put_u8(tag);
    out.put_slice(body);
    out.freeze()
}

/// Decodes what a topic session delivered. `None` for anything malformed.
pub fn decode(message: &Bytes) -> Option<TopicEvent> {
    let (&tag, body) = message.split_first()?;
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    Some(match tag {
        TAG_MESSAGE => TopicEvent::Message(message.slice(1..)),
        TAG_GAP => TopicEvent::Gap(u64::from_be_bytes(body.try_into().ok()?)),
        TAG_JOIN => TopicEvent::Join(text(body)?),
        TAG_LEAVE => TopicEvent::Leave(text(body)?),
        TAG_SNAPSHOT => {
            let (&flags, rest) = body.split_first()?;
            let (count, mut rest) = rest.split_first_chunk::<2>()?;
            let count = u16::from_be_bytes(*count);
            let mut members = Vec::new();
            for _ in 0..count {
                let (&len, tail) = rest.split_first()?;
                let (id, tail) = tail.split_at_checked(usize::from(len))?;
                members.push(text(id)?);
                rest = tail;
            }
            if !rest.is_empty() {
                return None;
            }
            TopicEvent::Snapshot {
                members,
                truncated: flags & 1 != 0,
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips() {
        assert_eq!(
            decode(&message(b"hi")),
            Some(TopicEvent::Message(Bytes::from_static(b"hi")))
        );
        assert_eq!(decode(&gap(7)), Some(TopicEvent::Gap(7)));
        assert_eq!(decode(&join("ann")), Some(TopicEvent::Join("ann".into())));
        assert_eq!(decode(&leave("ann")), Some(TopicEvent::Leave("ann".into())));
        let members = ["a", "bb", "ccc"];
        assert_eq!(
            decode(&snapshot(members.iter().copied(), 2, 3)),
            Some(TopicEvent::Snapshot {
                members: vec!["a".into(), "bb".into()],
                truncated: true
            })
        );
        for event in [
            TopicEvent::Gap(3),
            TopicEvent::Join("ann".into()),
            TopicEvent::Snapshot {
                members: vec!["a".into()],
                truncated: true,
            },
            TopicEvent::Snapshot {
                members: vec![],
                truncated: false,
            },
        ] {
            assert_eq!(decode(&encode(&event)), Some(event));
        }
        assert_eq!(gap_count(&gap(9)), Some(9));
        assert_eq!(gap_count(&message(b"x")), None);
        assert_eq!(decode(&Bytes::new()), None);
        assert_eq!(decode(&Bytes::from_static(&[9])), None);
        assert_eq!(decode(&Bytes::from_static(&[TAG_GAP, 1])), None);
    }
}

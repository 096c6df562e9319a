//! What a topic session carries from server to subscriber (spec/topics.md#events): a one-byte
//! tag, then the body. A message is encoded once per publish and shared by every subscriber
//! and by the history.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Epoch, StreamPosition};

/// `u64` BE offset, then the published payload.
pub(crate) const TAG_MESSAGE: u8 = 0x00;
/// `u64` BE: messages this subscriber will not receive just before the next one.
pub(crate) const TAG_GAP: u8 = 0x01;
/// A member joined: its id (UTF-8) follows.
pub(crate) const TAG_JOIN: u8 = 0x02;
/// A member left: its id (UTF-8) follows.
pub(crate) const TAG_LEAVE: u8 = 0x03;
/// Who is present: `u8` flags (bit 0: truncated), `u16` BE count, then per member `u8` length
/// and the id.
pub(crate) const TAG_SNAPSHOT: u8 = 0x04;
/// `u64` BE epoch, `u64` BE offset: the stream read and the offset the subscription starts
/// after.
pub(crate) const TAG_POSITION: u8 = 0x05;

/// The gap count that means "unknown": the stream's epoch changed.
const UNKNOWN: u64 = u64::MAX;

/// What a subscriber receives on a topic session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicEvent {
    /// A published message and its offset in the topic's stream.
    Message {
        /// Its offset (spec/topics.md#streams).
        offset: u64,
        /// The payload, as published.
        payload: Bytes,
    },
    /// This many messages will not arrive, just before the next one; `None` when the count is
    /// unknown because the stream's epoch changed (treat the state built from it as stale).
    Gap(Option<u64>),
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
    /// The stream this subscription reads, and the offset it starts after: the first event of
    /// every subscription, and again if the stream was reset.
    Position(StreamPosition),
    /// An event of a later version of the profile (tags 0x06–0xff): ignore it (M-TOPIC-1).
    Unknown {
        /// Its tag.
        tag: u8,
    },
}

/// A topic event the server encoded wrongly: the server's fault (spec/topics.md, M-TOPIC-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed topic event (tag {tag:?})")]
pub struct MalformedEvent {
    /// The tag of the malformed event; `None` for an empty message.
    pub tag: Option<u8>,
}

pub(crate) fn message(offset: u64, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len().saturating_add(9));
    out.put_u8(TAG_MESSAGE);
    out.put_u64(offset);
    out.put_slice(payload);
    out.freeze()
}

pub(crate) fn gap(count: Option<u64>) -> Bytes {
    tagged(TAG_GAP, &count.unwrap_or(UNKNOWN).to_be_bytes())
}

pub(crate) fn position(position: StreamPosition) -> Bytes {
    let mut out = BytesMut::with_capacity(17);
    out.put_u8(TAG_POSITION);
    out.put_u64(position.epoch.get());
    out.put_u64(position.offset);
    out.freeze()
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
        .take(max.min(usize::from(u16::MAX)))
        .collect();
    out.put_u8(u8::from(listed.len() < total));
    out.put_u16(u16::try_from(listed.len()).unwrap_or(u16::MAX));
    for m in &listed {
        out.put_u8(u8::try_from(m.len()).unwrap_or(u8::MAX));
        out.put_slice(m.as_bytes());
    }
    out.freeze()
}

/// Encodes any event, for a hub that feeds events it did not produce (a broker's).
pub(crate) fn encode(event: &TopicEvent) -> Bytes {
    match event {
        TopicEvent::Message { offset, payload } => message(*offset, payload),
        TopicEvent::Gap(count) => gap(*count),
        TopicEvent::Position(at) => position(*at),
        TopicEvent::Unknown { tag } => tagged(*tag, &[]),
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

fn tagged(tag: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len().saturating_add(1));
    out.put_u8(tag);
    out.put_slice(body);
    out.freeze()
}

/// Decodes what a topic session delivered. A message's payload is a slice of `message`, not
/// a copy.
pub fn decode(message: &Bytes) -> Result<TopicEvent, MalformedEvent> {
    let (&tag, body) = message.split_first().ok_or(MalformedEvent { tag: None })?;
    let bad = MalformedEvent { tag: Some(tag) };
    let text = |b: &[u8]| std::str::from_utf8(b).map(str::to_owned).map_err(|_| bad);
    let u64_at = |b: &[u8]| b.try_into().map(u64::from_be_bytes).map_err(|_| bad);
    Ok(match tag {
        TAG_MESSAGE => {
            let (offset, _) = body.split_first_chunk::<8>().ok_or(bad)?;
            TopicEvent::Message {
                offset: u64::from_be_bytes(*offset),
                payload: message.slice(9..),
            }
        }
        TAG_GAP => TopicEvent::Gap(Some(u64_at(body)?).filter(|&n| n != UNKNOWN)),
        TAG_JOIN => TopicEvent::Join(text(body)?),
        TAG_LEAVE => TopicEvent::Leave(text(body)?),
        TAG_SNAPSHOT => {
            let (&flags, rest) = body.split_first().ok_or(bad)?;
            let (count, mut rest) = rest.split_first_chunk::<2>().ok_or(bad)?;
            let count = u16::from_be_bytes(*count);
            let mut members = Vec::new();
            for _ in 0..count {
                let (&len, tail) = rest.split_first().ok_or(bad)?;
                let (id, tail) = tail.split_at_checked(usize::from(len)).ok_or(bad)?;
                members.push(text(id)?);
                rest = tail;
            }
            if !rest.is_empty() {
                return Err(bad);
            }
            TopicEvent::Snapshot {
                members,
                truncated: flags & 1 != 0,
            }
        }
        TAG_POSITION => {
            let (epoch, offset) = body.split_first_chunk::<8>().ok_or(bad)?;
            TopicEvent::Position(StreamPosition {
                epoch: Epoch::new(u64::from_be_bytes(*epoch)),
                offset: u64_at(offset)?,
            })
        }
        tag => TopicEvent::Unknown { tag },
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
            decode(&message(7, b"hi")),
            Ok(TopicEvent::Message {
                offset: 7,
                payload: Bytes::from_static(b"hi")
            })
        );
        assert_eq!(decode(&gap(Some(7))), Ok(TopicEvent::Gap(Some(7))));
        assert_eq!(decode(&gap(None)), Ok(TopicEvent::Gap(None)));
        let at = StreamPosition::new(Epoch::new(0xabc), 9);
        assert_eq!(decode(&position(at)), Ok(TopicEvent::Position(at)));
        assert_eq!(decode(&join("ann")), Ok(TopicEvent::Join("ann".into())));
        assert_eq!(decode(&leave("ann")), Ok(TopicEvent::Leave("ann".into())));
        let members = ["a", "bb", "ccc"];
        assert_eq!(
            decode(&snapshot(members.iter().copied(), 2, 3)),
            Ok(TopicEvent::Snapshot {
                members: vec!["a".into(), "bb".into()],
                truncated: true
            })
        );
        for event in [
            TopicEvent::Message {
                offset: 4,
                payload: Bytes::from_static(b"x"),
            },
            TopicEvent::Gap(Some(3)),
            TopicEvent::Gap(None),
            TopicEvent::Position(StreamPosition::new(Epoch::new(5), 6)),
            TopicEvent::Join("ann".into()),
            TopicEvent::Snapshot {
                members: vec!["a".into()],
                truncated: true,
            },
            TopicEvent::Snapshot {
                members: vec![],
                truncated: false,
            },
            TopicEvent::Unknown { tag: 9 },
        ] {
            assert_eq!(decode(&encode(&event)), Ok(event));
        }
        assert_eq!(
            decode(&Bytes::from_static(&[9])),
            Ok(TopicEvent::Unknown { tag: 9 })
        );
        assert_eq!(decode(&Bytes::new()), Err(MalformedEvent { tag: None }));
        for bad in [&[TAG_GAP, 1][..], &[TAG_MESSAGE, 0, 0], &[TAG_POSITION; 16]] {
            assert!(decode(&Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }
}

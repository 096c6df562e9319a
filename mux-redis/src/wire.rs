//! Names in Redis and what travels on a topic's channel.
//!
//! Every key of a topic carries the topic in a hash tag (`{topic}`), so a later cluster
//! deployment keeps a topic's keys, which one script touches together, in one slot.
//!
//! On a topic's channel (written by the scripts in `script.rs`):
//!
//! | first byte | then |
//! |---|---|
//! | `m` | `epoch:seq:origin:counter:flags` in ASCII, `\n`, the payload: a published message |
//! | `j` | the member id: it joined (no node held it before) |
//! | `l` | the member id: it left (no node holds it any more) |
//!
//! `seq` numbers a topic's messages in Redis's order (1, 2, ...) within an `epoch` (when
//! Redis created the counter, in µs): it is the message's offset in the topic's stream on
//! every node, so a node that missed some (its link dropped) knows how many, and a counter
//! Redis lost (a restart) is a new epoch, not mistaken for old messages; `origin`
//! and `counter` identify the publishing node and its publish, and flag bit 0 says the
//! origin already delivered it to its own subscribers.

/// Key and channel names under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
    channels: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
            channels: format!("{prefix}t:"),
        }
    }

    /// The topic's pub/sub channel.
    pub(crate) fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.channels)
    }

    /// The topic of a channel, if it is one of ours.
    pub(crate) fn topic_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.channels)
    }

    /// The topic's message counter.
    pub(crate) fn sequence(&self, topic: &str) -> String {
        format!("{}seq:{{{topic}}}", self.prefix)
    }

    /// The topic's history: a stream of its last messages, entry ids `<seq>-0`.
    pub(crate) fn history(&self, topic: &str) -> String {
        format!("{}h:{{{topic}}}", self.prefix)
    }

    /// The topic's presence entries (`node:member` scored by expiry).
    pub(crate) fn entries(&self, topic: &str) -> String {
        format!("{}pz:{{{topic}}}", self.prefix)
    }

    /// The topic's members (member -> entries).
    pub(crate) fn members(&self, topic: &str) -> String {
        format!("{}pm:{{{topic}}}", self.prefix)
    }

    /// A quota's key: kind (`h`, `o`, `m`) and whose.
    pub(crate) fn quota(&self, kind: &str, whose: &str) -> String {
        format!("{}q:{kind}:{whose}", self.prefix)
    }
}

/// Flag: the origin node delivered the message to its own subscribers already.
pub(crate) const DELIVERED_AT_ORIGIN: u8 = 1;

/// One item on a topic's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wire<'a> {
    Message {
        epoch: u64,
        seq: u64,
        origin: &'a str,
        counter: u64,
        flags: u8,
        payload: &'a [u8],
    },
    Join(&'a str),
    Leave(&'a str),
}

/// The `origin:counter:flags` part of a message, as the publish script expects it.
pub(crate) fn message_header(origin: &str, counter: u64, flags: u8) -> String {
    format!("{origin}:{counter}:{flags}")
}

/// The longest header we accept before the payload: `u64`s and a 64-byte node id.
const MAX_HEADER: usize = 128;

/// Parses one channel payload; `None` for anything we did not write.
pub(crate) fn decode(payload: &[u8]) -> Option<Wire<'_>> {
    let (&kind, rest) = payload.split_first()?;
    match kind {
        b'm' => {
            let end = rest.iter().take(MAX_HEADER).position(|&b| b == b'\n')?;
            let (header, body) = rest.split_at_checked(end)?;
            let payload = body.get(1..)?;
            let mut fields = std::str::from_utf8(header).ok()?.split(':');
            let epoch = fields.next()?.parse().ok()?;
            let seq = fields.next()?.parse().ok()?;
            let origin = fields.next()?;
            let counter = fields.next()?.parse().ok()?;
            let flags = fields.next()?.parse().ok()?;
            if fields.next().is_some() {
                return None;
            }
            Some(Wire::Message {
                epoch,
                seq,
                origin,
                counter,
                flags,
                payload,
            })
        }
        b'j' => std::str::from_utf8(rest).ok().map(Wire::Join),
        b'l' => std::str::from_utf8(rest).ok().map(Wire::Leave),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn what_the_scripts_write_parses_back() {
        let mut m = b"m1700000000123456:42:".to_vec();
        m.extend_from_slice(message_header("node-1", 7, DELIVERED_AT_ORIGIN).as_bytes());
        m.extend_from_slice(b"\nhello\nworld");
        assert_eq!(
            decode(&m),
            Some(Wire::Message {
                epoch: 1_700_000_000_123_456,
                seq: 42,
                origin: "node-1",
                counter: 7,
                flags: 1,
                payload: b"hello\nworld",
            })
        );
        assert_eq!(
            decode(b"m5:1:n:2:0\n"),
            Some(Wire::Message {
                epoch: 5,
                seq: 1,
                origin: "n",
                counter: 2,
                flags: 0,
                payload: b"",
            })
        );
        assert_eq!(decode(b"jann:x"), Some(Wire::Join("ann:x")));
        assert_eq!(decode(b"lann"), Some(Wire::Leave("ann")));
        for bad in [
            &b""[..],
            b"x",
            b"m5:1:n:2\nno flags",
            b"m5:1:n:2:0:9\nextra",
            b"mnope",
            b"m5:-1:n:2:0\n",
            b"m5:1:n:2:0",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_share_the_topic_hash_tag() {
        let n = Names::new("p:");
        assert_eq!(n.channel("room"), "p:t:room");
        assert_eq!(n.topic_of("p:t:room/1"), Some("room/1"));
        assert_eq!(n.topic_of("other"), None);
        assert_eq!(n.entries("room"), "p:pz:{room}");
        assert_eq!(n.members("room"), "p:pm:{room}");
        assert_eq!(n.sequence("room"), "p:seq:{room}");
        assert_eq!(n.history("room"), "p:h:{room}");
    }
}

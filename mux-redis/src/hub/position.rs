//! Where each topic is on this node: the last message it delivered (Redis's numbering epoch
//! for the topic, and the message's number), so that after a reconnect each subscriber is
//! told exactly how many messages it missed.

use std::collections::HashMap;

/// A message's place: the topic's numbering epoch in Redis, and its number in it.
pub(crate) type At = (u64, u64);

/// Positions of the topics with subscribers here (entries are removed with the topic's
/// subscription, so this is bounded by the topics).
#[derive(Debug, Default)]
pub(crate) struct Positions {
    last: HashMap<String, At>,
}

impl Positions {
    /// This node is about to deliver message `at`: returns how many messages just before it
    /// its subscribers did not get. Nothing is owed before the first message since the topic
    /// was subscribed; a new epoch (Redis lost the counter) owes the new epoch's messages
    /// before this one; a message at or before the last one owes nothing and moves nothing.
    pub(crate) fn advance(&mut self, topic: &str, at: At) -> u64 {
        match self.last.get_mut(topic) {
            None => {
                self.last.insert(topic.to_owned(), at);
                0
            }
            Some(last) if last.0 == at.0 && at.1 <= last.1 => 0,
            Some(last) => {
                let from = if last.0 == at.0 { last.1 } else { 0 };
                *last = at;
                at.1.saturating_sub(from).saturating_sub(1)
            }
        }
    }

    /// The topic has no subscription here any more.
    pub(crate) fn forget(&mut self, topic: &str) {
        self.last.remove(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_exactly_what_was_not_delivered() {
        let mut p = Positions::default();
        assert_eq!(p.advance("t", (1, 5)), 0, "nothing owed before the first");
        assert_eq!(p.advance("t", (1, 6)), 0);
        assert_eq!(p.advance("t", (1, 10)), 3);
        assert_eq!(p.advance("t", (1, 9)), 0, "an older one owes nothing");
        assert_eq!(p.advance("t", (1, 10)), 0, "nor the same one again");
        assert_eq!(p.advance("t", (1, 11)), 0);
        // Redis restarted: a new epoch, whose 1 and 2 we missed.
        assert_eq!(p.advance("t", (2, 3)), 2);
        // A reset with nothing missed.
        assert_eq!(p.advance("t", (3, 1)), 0);
        p.forget("t");
        assert_eq!(p.advance("t", (3, 9)), 0, "a new subscription owes nothing");
        assert_eq!(p.advance("u", (3, 9)), 0);
    }
}

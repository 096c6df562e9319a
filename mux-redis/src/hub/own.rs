//! This node's own publishes on their way through Redis, so each reaches this node's
//! subscribers exactly once: from Redis normally, or at once when the publish failed (and
//! then not again if it reached Redis after all).

use std::collections::{HashMap, VecDeque};

/// Failed publishes remembered at most; an older one whose echo never came (it never
/// reached Redis) is forgotten first.
const MAX_DELIVERED_HERE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Sent, not confirmed yet.
    Pending,
    /// Its echo was delivered before Redis confirmed it.
    Echoed,
    /// It failed and was delivered here: its echo, if any, is skipped.
    DeliveredHere,
}

/// Publishes in flight (one entry per publish future, bounded by the application's own
/// concurrency) and failed publishes delivered here (at most `MAX_DELIVERED_HERE`).
#[derive(Debug, Default)]
pub(crate) struct Own {
    states: HashMap<u64, State>,
    delivered_here: VecDeque<u64>,
}

impl Own {
    /// Publish `counter` is about to be sent over a live link.
    pub(crate) fn sent(&mut self, counter: u64) {
        self.states.insert(counter, State::Pending);
    }

    /// Redis confirmed it: its echo, before or after, is delivered normally.
    pub(crate) fn confirmed(&mut self, counter: u64) {
        self.states.remove(&counter);
    }

    /// Redis did not confirm it: true if this node must deliver it now (its echo has not
    /// come), in which case a later echo is skipped.
    pub(crate) fn failed(&mut self, counter: u64) -> bool {
        if self.states.remove(&counter) == Some(State::Echoed) {
            return false;
        }
        self.states.insert(counter, State::DeliveredHere);
        self.delivered_here.push_back(counter);
        while self.delivered_here.len() > MAX_DELIVERED_HERE {
            if let Some(old) = self.delivered_here.pop_front() {
                if self.states.get(&old) == Some(&State::DeliveredHere) {
                    self.states.remove(&old);
                }
            }
        }
        true
    }

    /// Our own message came back from Redis: true if it must not be delivered (here
    /// already).
    pub(crate) fn skip_echo(&mut self, counter: u64, flags: u8) -> bool {
        if flags & crate::wire::DELIVERED_AT_ORIGIN != 0 {
            return true;
        }
        match self.states.get(&counter).copied() {
            Some(State::Pending) => {
                self.states.insert(counter, State::Echoed);
                false
            }
            Some(State::DeliveredHere) => {
                self.states.remove(&counter);
                true
            }
            Some(State::Echoed) => true,
            None => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn every_own_publish_is_delivered_here_once() {
        let mut own = Own::default();
        // Confirmed, echo after the confirmation or before it: delivered from the echo.
        own.sent(1);
        own.confirmed(1);
        assert!(!own.skip_echo(1, 0));
        own.sent(2);
        assert!(!own.skip_echo(2, 0));
        own.confirmed(2);
        // Failed before its echo: delivered at once, its late echo skipped.
        own.sent(3);
        assert!(own.failed(3));
        assert!(own.skip_echo(3, 0));
        // Failed after its echo was delivered: not delivered again.
        own.sent(4);
        assert!(!own.skip_echo(4, 0));
        assert!(!own.failed(4));
        // Published while the link was down: delivered at once, flagged.
        assert!(own.skip_echo(5, crate::wire::DELIVERED_AT_ORIGIN));
        assert!(own.states.is_empty());
    }

    #[test]
    fn failed_publishes_are_remembered_boundedly() {
        let mut own = Own::default();
        for c in 0..(MAX_DELIVERED_HERE as u64 * 2) {
            own.sent(c);
            assert!(own.failed(c));
        }
        assert_eq!(own.delivered_here.len(), MAX_DELIVERED_HERE);
        assert_eq!(own.states.len(), MAX_DELIVERED_HERE);
    }
}

//! The opener's mirror of the rates an acceptor granted (spec/sessions.md#rates).
//!
//! The acceptor polices the opener's DATA with token buckets and, under the close policies,
//! resets the session (4002) or closes the connection (1008) when a frame finds a bucket
//! short. The opener keeps the same buckets, started when the ACCEPT arrives (no earlier
//! than the acceptor started its own, so never fuller), and sends a frame only when they
//! would pass it. A well-behaved application therefore never trips a rate it was granted,
//! however fast it queues messages.

use std::time::Duration;

use crate::frame::{RateLimits, MIN_FRAGMENT};
use crate::rate::TokenBucket;
use crate::time::Timestamp;

/// What the pacer allows for the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Send a frame of this many bytes now: the planned length, or a shorter non-final
    /// fragment of at least `MIN_FRAGMENT` bytes.
    Send(usize),
    /// Send nothing on this session until this much time has passed.
    Wait(Duration),
}

/// Token buckets mirroring a granted `RateLimits`.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl Pacer {
    /// A pacer for `rate`, full at `now`; `None` if the grant sets no rate.
    pub(crate) fn for_grant(rate: &RateLimits, now: Timestamp) -> Option<Pacer> {
        if rate.messages_per_sec == 0 && rate.bytes_per_sec == 0 {
            return None;
        }
        Some(Pacer {
            messages: TokenBucket::new(rate.messages_per_sec, rate.burst_messages, now),
            bytes: TokenBucket::new(rate.bytes_per_sec, rate.burst_bytes, now),
        })
    }

    /// How much of a planned frame of `len` payload bytes may go now. `starts_message`: the
    /// frame begins a message (it costs a message token). `splittable`: the frame carries
    /// message bytes, so a shorter non-final fragment may be sent instead.
    pub(crate) fn admit(
        &mut self,
        now: Timestamp,
        starts_message: bool,
        len: usize,
        splittable: bool,
    ) -> Pace {
        if starts_message && !self.messages.can_take(now, 1) {
            return Pace::Wait(self.messages.time_until(now, 1));
        }
        let wanted = u64::try_from(len).unwrap_or(u64::MAX);
        let available = self.bytes.available(now);
        if wanted <= available {
            return Pace::Send(len);
        }
        let min_fragment = u64::from(MIN_FRAGMENT);
        if splittable && available >= min_fragment {
            return Pace::Send(usize::try_from(available).unwrap_or(len));
        }
        // Wait until the frame fits, or a minimum fragment does if the frame may be split
        // (the receiver requires MIN_FRAGMENT of every non-final fragment).
        let target = if splittable {
            wanted.min(min_fragment)
        } else {
            wanted
        };
        let wait = self.bytes.time_until(now, target);
        if wait.is_zero() {
            // The bucket is full and still short: the grant's burst is below what the
            // frame must carry (a burst under MIN_FRAGMENT, or an unsplittable frame
            // above the burst). Send it on a full bucket, the closest this side can come.
            return Pace::Send(usize::try_from(target).unwrap_or(len));
        }
        Pace::Wait(wait)
    }

    /// Takes the tokens of a frame that is going out.
    pub(crate) fn charge(&mut self, now: Timestamp, starts_message: bool, len: usize) {
        if starts_message {
            self.messages.force_take(now, 1);
        }
        self.bytes
            .force_take(now, u64::try_from(len).unwrap_or(u64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn pacer(
        messages_per_sec: u32,
        burst_messages: u32,
        bytes_per_sec: u32,
        burst_bytes: u32,
    ) -> Pacer {
        let rate = RateLimits {
            messages_per_sec,
            bytes_per_sec,
            burst_messages,
            burst_bytes,
        };
        Pacer::for_grant(&rate, at(0)).expect("a rate")
    }

    #[test]
    fn no_rate_no_pacer() {
        assert!(Pacer::for_grant(&RateLimits::default(), at(0)).is_none());
    }

    #[test]
    fn messages_wait_for_a_token_and_continuations_do_not() {
        let mut p = pacer(10, 2, 0, 0);
        for _ in 0..2 {
            assert_eq!(p.admit(at(0), true, 100, true), Pace::Send(100));
            p.charge(at(0), true, 100);
        }
        assert_eq!(
            p.admit(at(0), true, 100, true),
            Pace::Wait(Duration::from_millis(100))
        );
        // The rest of a message already started needs no message token.
        assert_eq!(p.admit(at(0), false, 100, true), Pace::Send(100));
        assert_eq!(p.admit(at(100), true, 100, true), Pace::Send(100));
    }

    #[test]
    fn bytes_split_into_fragments_the_bucket_holds() {
        let mut p = pacer(0, 0, 1000, 4096);
        assert_eq!(p.admit(at(0), true, 10_000, true), Pace::Send(4096));
        p.charge(at(0), true, 4096);
        // Empty: wait for a minimum fragment's worth (1.024 s at 1000 B/s).
        assert_eq!(
            p.admit(at(0), false, 5904, true),
            Pace::Wait(Duration::from_millis(1024))
        );
        assert_eq!(p.admit(at(1100), false, 5904, true), Pace::Send(1100));
    }

    #[test]
    fn a_burst_below_the_minimum_fragment_still_makes_progress() {
        let mut p = pacer(0, 0, 100, 10);
        assert_eq!(p.admit(at(0), true, 5000, true), Pace::Send(1024));
        p.charge(at(0), true, 1024);
        assert!(matches!(p.admit(at(0), false, 3976, true), Pace::Wait(_)));
    }

    #[test]
    fn an_unsplittable_frame_waits_for_all_its_bytes() {
        let mut p = pacer(0, 0, 1000, 2000);
        p.charge(at(0), true, 2000);
        assert_eq!(
            p.admit(at(0), true, 500, false),
            Pace::Wait(Duration::from_millis(500))
        );
        assert_eq!(p.admit(at(500), true, 500, false), Pace::Send(500));
    }
}

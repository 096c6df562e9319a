//! The opener's mirror of the rates an acceptor granted (spec/sessions.md#rates).
//!
//! The acceptor polices the opener's DATA with token buckets and, under the close policies,
//! resets the session (4002) or closes the connection (1008) when a frame finds a bucket
//! short. The opener keeps the same buckets, started when the ACCEPT arrives (no earlier
//! than the acceptor started its own), and sends a frame only when they would pass it.
//!
//! Frames do not arrive spaced exactly as they were sent: scheduling and the network delay
//! some more than others, and a frame that catches up with the one before it would find
//! the acceptor's bucket short if the mirror ran at exactly the grant. So the mirror keeps a
//! margin: it holds a quarter of each burst back and refills 1/32 slower than the rate.
//! Frames bunched by up to a quarter burst's worth of delay still pass, and the margin
//! rebuilds while the opener sends.

use std::time::Duration;

use crate::frame::{RateLimits, MIN_FRAGMENT};
use crate::rate::TokenBucket;
use crate::time::Timestamp;

/// The mirror's clock runs at `CLOCK_NUM / CLOCK_DEN` of real time: it refills 1/32 slower.
const CLOCK_NUM: u32 = 31;
const CLOCK_DEN: u32 = 32;

/// What the pacer allows for the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Send a frame of this many bytes now: the planned length, or a shorter non-final
    /// fragment of at least `MIN_FRAGMENT` bytes.
    Send(usize),
    /// Send nothing on this session until this much time has passed.
    Wait(Duration),
}

/// Token buckets mirroring a granted `RateLimits`, with a margin.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    messages: TokenBucket,
    bytes: TokenBucket,
    /// When the mirror started; its clock runs slow from here.
    origin: Timestamp,
}

/// A burst less the quarter held in reserve (never below 1).
fn mirrored_burst(burst: u32) -> u32 {
    burst.saturating_sub(burst / 4).max(1)
}

impl Pacer {
    /// A pacer for `rate`, full at `now`; `None` if the grant sets no rate.
    pub(crate) fn for_grant(rate: &RateLimits, now: Timestamp) -> Option<Pacer> {
        if rate.messages_per_sec == 0 && rate.bytes_per_sec == 0 {
            return None;
        }
        Some(Pacer {
            messages: TokenBucket::new(
                rate.messages_per_sec,
                mirrored_burst(rate.burst_messages),
                now,
            ),
            bytes: TokenBucket::new(rate.bytes_per_sec, mirrored_burst(rate.burst_bytes), now),
            origin: now,
        })
    }

    /// `now` on the mirror's slow clock.
    fn clock(&self, now: Timestamp) -> Timestamp {
        let real = now.saturating_duration_since(self.origin);
        // Divided first, so it cannot overflow (the nanoseconds lost do not matter).
        let slow = real
            .checked_div(CLOCK_DEN)
            .and_then(|d| d.checked_mul(CLOCK_NUM))
            .unwrap_or(real);
        self.origin.saturating_add(slow)
    }

    /// A wait on the slow clock in real time, rounded up.
    fn real(wait: Duration) -> Duration {
        // Divided first, so it cannot overflow; the added microsecond covers what the
        // division drops.
        wait.checked_div(CLOCK_NUM)
            .and_then(|d| d.checked_mul(CLOCK_DEN))
            .unwrap_or(Duration::MAX)
            .saturating_add(Duration::from_micros(1))
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
        let now = self.clock(now);
        if starts_message && !self.messages.can_take(now, 1) {
            return Pace::Wait(Self::real(self.messages.time_until(now, 1)));
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
            // The bucket is full and still short: the frame needs more than the mirror
            // holds (a burst under MIN_FRAGMENT, or an unsplittable frame above the
            // mirrored burst). Send it on a full bucket, the closest this side can come;
            // the acceptor's bucket, full too, holds the reserve as well.
            return Pace::Send(usize::try_from(target).unwrap_or(len));
        }
        Pace::Wait(Self::real(wait))
    }

    /// Takes the tokens of a frame that is going out.
    pub(crate) fn charge(&mut self, now: Timestamp, starts_message: bool, len: usize) {
        let now = self.clock(now);
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

    /// `ms` of the mirror's slow clock in real time, as `Pacer::real` rounds it.
    fn real_ms(ms: u64) -> Duration {
        Duration::from_millis(ms) / 31 * 32 + Duration::from_micros(1)
    }

    #[test]
    fn no_rate_no_pacer() {
        assert!(Pacer::for_grant(&RateLimits::default(), at(0)).is_none());
    }

    #[test]
    fn a_quarter_of_the_burst_is_held_back() {
        assert_eq!(mirrored_burst(8), 6);
        assert_eq!(mirrored_burst(3), 3);
        assert_eq!(mirrored_burst(1), 1);
        assert_eq!(mirrored_burst(0), 1);
        let mut p = pacer(10, 8, 0, 0);
        for _ in 0..6 {
            assert_eq!(p.admit(at(0), true, 1, true), Pace::Send(1));
            p.charge(at(0), true, 1);
        }
        assert!(matches!(p.admit(at(0), true, 1, true), Pace::Wait(_)));
    }

    #[test]
    fn messages_wait_for_a_token_on_the_slow_clock() {
        let mut p = pacer(10, 2, 0, 0);
        for _ in 0..2 {
            assert_eq!(p.admit(at(0), true, 100, true), Pace::Send(100));
            p.charge(at(0), true, 100);
        }
        // One token takes 100 ms of the slow clock: 103.2 ms of real time.
        let wait = real_ms(100);
        assert_eq!(p.admit(at(0), true, 100, true), Pace::Wait(wait));
        // The rest of a message already started needs no message token.
        assert_eq!(p.admit(at(0), false, 100, true), Pace::Send(100));
        assert!(matches!(p.admit(at(103), true, 100, true), Pace::Wait(_)));
        let later = Timestamp::from_micros(u64::try_from(wait.as_micros()).unwrap());
        assert_eq!(p.admit(later, true, 100, true), Pace::Send(100));
    }

    #[test]
    fn bytes_split_into_fragments_the_bucket_holds() {
        // Burst 4096, of which 3072 are mirrored.
        let mut p = pacer(0, 0, 1000, 4096);
        assert_eq!(p.admit(at(0), true, 10_000, true), Pace::Send(3072));
        p.charge(at(0), true, 3072);
        // Empty: wait for a minimum fragment's worth (1.024 s of the slow clock).
        assert_eq!(p.admit(at(0), false, 6928, true), Pace::Wait(real_ms(1024)));
        // 1,100 ms of real time is 1,065.6 ms of the slow clock: 1,065 whole bytes.
        assert_eq!(p.admit(at(1100), false, 6928, true), Pace::Send(1065));
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
        // Burst 2000, of which 1500 are mirrored.
        let mut p = pacer(0, 0, 1000, 2000);
        p.charge(at(0), true, 1500);
        assert_eq!(p.admit(at(0), true, 500, false), Pace::Wait(real_ms(500)));
        assert_eq!(p.admit(at(517), true, 500, false), Pace::Send(500));
    }
}

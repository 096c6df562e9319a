//! Token buckets with continuous refill, in integer arithmetic on the input clock.

use std::time::Duration;

use crate::time::Timestamp;

const MICRO: u64 = 1_000_000;

/// A token bucket: `rate` tokens per second, holding at most `burst`. A rate of 0 means
/// unlimited. Tokens are kept in millionths so refill is continuous, not per tick.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u64,
    capacity_micro: u64,
    tokens_micro: u64,
    /// Tokens taken beyond what the bucket held (see [`TokenBucket::force_take`]); refill
    /// pays it back before the bucket holds tokens again. Never nonzero with tokens held.
    debt_micro: u64,
    last: Timestamp,
}

impl TokenBucket {
    /// A full bucket. `burst` below 1 is raised to 1 so a limited bucket can ever pass.
    pub(crate) fn new(rate: u32, burst: u32, now: Timestamp) -> Self {
        let capacity_micro = u64::from(burst.max(1)).saturating_mul(MICRO);
        TokenBucket {
            rate: u64::from(rate),
            capacity_micro,
            tokens_micro: capacity_micro,
            debt_micro: 0,
            last: now,
        }
    }

    /// A bucket that never limits.
    pub(crate) fn unlimited() -> Self {
        TokenBucket {
            rate: 0,
            capacity_micro: 0,
            tokens_micro: 0,
            debt_micro: 0,
            last: Timestamp::ZERO,
        }
    }

    pub(crate) fn is_unlimited(&self) -> bool {
        self.rate == 0
    }

    fn refill(&mut self, now: Timestamp) {
        if now <= self.last {
            // Time does not go backwards here; a stale input is treated as "no time passed".
            return;
        }
        let elapsed = now.as_micros().saturating_sub(self.last.as_micros());
        // elapsed µs × rate tokens/s = rate × elapsed millionths of a token.
        let mut added = elapsed.saturating_mul(self.rate);
        let repaid = added.min(self.debt_micro);
        self.debt_micro = self.debt_micro.saturating_sub(repaid);
        added = added.saturating_sub(repaid);
        self.tokens_micro = self
            .tokens_micro
            .saturating_add(added)
            .min(self.capacity_micro);
        self.last = now;
    }

    /// Takes `n` tokens if all are available; otherwise takes none.
    pub(crate) fn try_take(&mut self, now: Timestamp, n: u64) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.refill(now);
        let need = n.saturating_mul(MICRO);
        if self.tokens_micro >= need {
            self.tokens_micro = self.tokens_micro.saturating_sub(need);
            true
        } else {
            false
        }
    }

    /// Whether `n` tokens are available, without taking them.
    pub(crate) fn can_take(&mut self, now: Timestamp, n: u64) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.refill(now);
        self.tokens_micro >= n.saturating_mul(MICRO)
    }

    /// Takes `n` tokens whether or not they are there: what is missing becomes debt that
    /// the refill pays back first. Used by the throttle policy, which accepts a frame over
    /// the rate but must then hold the sender back for as long as the excess takes to earn.
    pub(crate) fn force_take(&mut self, now: Timestamp, n: u64) {
        if self.is_unlimited() {
            return;
        }
        self.refill(now);
        let need = n.saturating_mul(MICRO);
        let missing = need.saturating_sub(self.tokens_micro);
        self.tokens_micro = self.tokens_micro.saturating_sub(need);
        self.debt_micro = self.debt_micro.saturating_add(missing);
    }

    /// Whether at least one whole token is available.
    pub(crate) fn has_token(&mut self, now: Timestamp) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.refill(now);
        self.tokens_micro >= MICRO
    }

    /// Whole tokens available now (0 while in debt). Unlimited buckets report `u64::MAX`.
    pub(crate) fn available(&mut self, now: Timestamp) -> u64 {
        if self.is_unlimited() {
            return u64::MAX;
        }
        self.refill(now);
        self.tokens_micro / MICRO
    }

    /// How long until `n` tokens are available (zero if they are now). Used for retry hints.
    pub(crate) fn time_until(&mut self, now: Timestamp, n: u64) -> Duration {
        if self.is_unlimited() {
            return Duration::ZERO;
        }
        self.refill(now);
        let need = n.saturating_mul(MICRO).min(self.capacity_micro);
        let missing = need
            .saturating_sub(self.tokens_micro)
            .saturating_add(self.debt_micro);
        // missing millionths / rate tokens per s = missing / rate µs; round up.
        Duration::from_micros(missing.div_ceil(self.rate.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn burst_then_exactly_the_rate() {
        let mut b = TokenBucket::new(10, 5, at(0));
        for _ in 0..5 {
            assert!(b.try_take(at(0), 1));
        }
        assert!(!b.try_take(at(0), 1));
        // 100 ms at 10/s refills exactly one token.
        assert!(!b.try_take(at(99), 1));
        assert!(b.try_take(at(100), 1));
        assert!(!b.try_take(at(100), 1));
    }

    #[test]
    fn refill_never_exceeds_burst() {
        let mut b = TokenBucket::new(1000, 3, at(0));
        assert!(b.try_take(at(0), 3));
        assert!(b.try_take(at(1_000_000), 3));
        assert!(!b.try_take(at(1_000_000), 1));
    }

    #[test]
    fn time_until_predicts_the_refill() {
        let mut b = TokenBucket::new(4, 1, at(0));
        assert!(b.try_take(at(0), 1));
        assert_eq!(b.time_until(at(0), 1), Duration::from_millis(250));
        assert!(b.try_take(at(250), 1));
    }

    #[test]
    fn huge_elapsed_times_do_not_overflow() {
        let mut b = TokenBucket::new(u32::MAX, u32::MAX, Timestamp::ZERO);
        assert!(b.try_take(Timestamp::ZERO, u64::from(u32::MAX)));
        assert!(b.try_take(Timestamp::NEVER, 1));
    }

    #[test]
    fn forced_takes_become_debt_paid_back_before_new_tokens() {
        let mut b = TokenBucket::new(10, 2, at(0));
        b.force_take(at(0), 5);
        // 2 tokens were there; 3 are owed: 300 ms to repay, 100 ms more for a token.
        assert!(!b.has_token(at(0)));
        assert_eq!(b.time_until(at(0), 1), Duration::from_millis(400));
        assert!(!b.has_token(at(399)));
        assert!(b.has_token(at(400)));
        assert!(b.can_take(at(400), 1));
        assert!(!b.can_take(at(400), 2));
        assert!(b.try_take(at(400), 1));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut b = TokenBucket::new(0, 0, at(0));
        for _ in 0..10_000 {
            assert!(b.try_take(at(0), 1_000_000));
        }
    }
}

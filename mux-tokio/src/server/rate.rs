//! A keyed rate limit (GCRA: one timestamp per key) with bounded memory, for handshakes per
//! source address. Keys whose timestamp has passed hold no information (a fresh key would
//! be admitted the same way), so they are swept when the table is full; if every key is
//! still busy, an unknown key is admitted without being stored: the table never grows past
//! its bound, and a flood of distinct sources meets the pre-authentication cap instead.
//!
//! They are also swept at most [`SWEEP_EVERY`] apart while the table is used, and whenever
//! the server's housekeeping asks ([`KeyedRate::sweep`]), and the table then gives back the
//! capacity it grew to: after a flood from many sources has passed, neither the keys (a
//! `String` each for a principal) nor their buckets stay behind.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use crate::sparse::ShrinkSparse;

/// Stale keys are swept at least this often while the table is in use.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A rate: `per_second` on average, with bursts of up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeRate {
    /// Sustained handshakes per second. 0 turns the limit off.
    pub per_second: u32,
    /// Handshakes admitted at once from an idle source.
    pub burst: u32,
}

impl HandshakeRate {
    /// No limit.
    pub const UNLIMITED: HandshakeRate = HandshakeRate {
        per_second: 0,
        burst: 0,
    };
}

/// GCRA state for many keys.
#[derive(Debug)]
pub(crate) struct KeyedRate<K> {
    /// Theoretical arrival time of the next request, per key.
    tat: HashMap<K, Instant>,
    interval: Duration,
    /// How far ahead of now a key's TAT may be and still admit: interval × (burst − 1).
    tolerance: Duration,
    max_keys: usize,
    /// When stale keys are swept next (`None`: at the next check).
    next_sweep: Option<Instant>,
}

impl<K: Hash + Eq + Clone> KeyedRate<K> {
    pub(crate) fn new(rate: HandshakeRate, max_keys: usize) -> Self {
        let interval = Duration::from_secs(1)
            .checked_div(rate.per_second)
            .unwrap_or(Duration::ZERO);
        KeyedRate {
            tat: HashMap::new(),
            interval,
            tolerance: interval.saturating_mul(rate.burst.saturating_sub(1)),
            max_keys,
            next_sweep: None,
        }
    }

    /// Admits one request from `key` at `now`, or says how long until one would be.
    pub(crate) fn check(&mut self, key: K, now: Instant) -> Result<(), Duration> {
        self.check_n(&key, 1, now)
    }

    /// Admits `n` units at once (GCRA with an increment of `n` intervals): all or none.
    pub(crate) fn check_n(&mut self, key: &K, n: u32, now: Instant) -> Result<(), Duration> {
        if self.interval.is_zero() || n == 0 {
            return Ok(());
        }
        if self.next_sweep.is_none_or(|next| now >= next) {
            self.sweep(now);
        }
        if !self.tat.contains_key(key) && self.tat.len() >= self.max_keys {
            self.sweep(now);
            if self.tat.len() >= self.max_keys {
                return Ok(());
            }
        }
        let tat = self.tat.get(key).copied().unwrap_or(now).max(now);
        let increment = self.interval.saturating_mul(n);
        // The last of the n units arrives at tat + (n − 1)·T; it must be within the
        // tolerance of now.
        let last = tat
            .checked_add(increment.saturating_sub(self.interval))
            .unwrap_or(tat);
        let ahead = last.saturating_duration_since(now);
        if ahead > self.tolerance {
            return Err(ahead.saturating_sub(self.tolerance));
        }
        self.tat
            .insert(key.clone(), tat.checked_add(increment).unwrap_or(tat));
        Ok(())
    }

    /// Forgets the keys whose timestamp has passed (they would be admitted as new ones
    /// are) and gives back the capacity the table no longer uses.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.tat.retain(|_, tat| *tat > now);
        self.tat.shrink_if_sparse();
        self.next_sweep = now.checked_add(SWEEP_EVERY);
    }

    /// Keys stored now.
    pub(crate) fn len(&self) -> usize {
        self.tat.len()
    }

    /// Keys the table has room for without growing.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.tat.capacity()
    }
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

    const TEN_BURST_FOUR: HandshakeRate = HandshakeRate {
        per_second: 10,
        burst: 4,
    };

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let mut r = KeyedRate::new(TEN_BURST_FOUR, 16);
        let t = Instant::now();
        for _ in 0..4 {
            assert_eq!(r.check(1u8, t), Ok(()));
        }
        let wait = r.check(1, t).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // Other keys are independent.
        assert_eq!(r.check(2, t), Ok(()));
        // One more after one interval, not two.
        let later = t + Duration::from_millis(100);
        assert_eq!(r.check(1, later), Ok(()));
        assert!(r.check(1, later).is_err());
    }

    #[test]
    fn the_table_never_passes_its_bound() {
        let mut r = KeyedRate::new(TEN_BURST_FOUR, 8);
        let t = Instant::now();
        for k in 0..100u32 {
            assert_eq!(r.check(k, t), Ok(()));
            assert!(r.len() <= 8);
        }
        // Once their timestamps pass, stale keys make room for new ones.
        let later = t + Duration::from_secs(1);
        assert_eq!(r.check(1000, later), Ok(()));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_burst_of_sources_leaves_nothing_behind_once_it_has_passed() {
        let mut r = KeyedRate::new(TEN_BURST_FOUR, 65_536);
        let t = Instant::now();
        for k in 0..10_000u32 {
            assert_eq!(r.check(k, t), Ok(()));
        }
        assert_eq!(r.len(), 10_000);
        let grown = r.capacity();
        // Every timestamp is 100 ms ahead: swept by the housekeeping once they have passed,
        // not before.
        r.sweep(t + Duration::from_millis(50));
        assert_eq!((r.len(), r.capacity()), (10_000, grown));
        r.sweep(t + Duration::from_millis(100));
        assert_eq!(r.len(), 0);
        assert!(
            r.capacity() <= 128,
            "capacity {} after the sweep",
            r.capacity()
        );
    }

    #[test]
    fn a_table_in_use_sweeps_itself_on_a_schedule() {
        let mut r = KeyedRate::new(TEN_BURST_FOUR, 65_536);
        let t = Instant::now();
        for k in 0..1000u32 {
            assert_eq!(r.check(k, t), Ok(()));
        }
        // Within SWEEP_EVERY of the last sweep, stale keys stay (no O(n) pass per check).
        let soon = t + SWEEP_EVERY / 2;
        assert_eq!(r.check(5000, soon), Ok(()));
        assert_eq!(r.len(), 1001);
        // After it, the next check sweeps: only the key just checked is left.
        let later = t + SWEEP_EVERY;
        assert_eq!(r.check(6000, later), Ok(()));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn several_units_at_once_are_all_or_nothing() {
        let mut r = KeyedRate::new(TEN_BURST_FOUR, 16);
        let t = Instant::now();
        assert_eq!(r.check_n(&1u8, 3, t), Ok(()));
        // One unit is left of the burst: two are refused whole, one is admitted.
        assert!(r.check_n(&1, 2, t).is_err());
        assert_eq!(r.check_n(&1, 1, t), Ok(()));
        // More than the burst is never admitted at once.
        assert!(r.check_n(&2, 5, t).is_err());
    }

    #[test]
    fn zero_is_unlimited() {
        let mut r = KeyedRate::new(HandshakeRate::UNLIMITED, 1);
        let t = Instant::now();
        for _ in 0..1000 {
            assert_eq!(r.check(1u8, t), Ok(()));
        }
        assert_eq!(r.len(), 0);
    }
}

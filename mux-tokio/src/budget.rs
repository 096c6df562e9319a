//! The server-wide memory budget: every connection reports the bytes it holds for its peer
//! (buffers, queued and half-received messages, a partial WebSocket message, its fixed
//! state), and as the sum nears the budget the server acts in a fixed order, as Envoy's
//! overload manager does:
//!
//! 1. from [`PAUSE_READS`] of the budget: connections holding more than [`EXPENSIVE`]
//!    stop reading (TCP backpressure reaches their peers; nothing new is buffered);
//! 2. from [`SHRINK_BUFFERS`]: idle connections give back their transmit buffers at once;
//! 3. from [`REFUSE_HANDSHAKES`]: new handshakes are answered 503 with `Retry-After`;
//! 4. at the budget: the connection holding the most memory per byte of progress since the
//!    last look (held² / (held + delivered)) is closed with 1013 TRY_AGAIN_LATER (`retry_after_ms` set), and so on until
//!    the victims' memory covers the excess.
//!
//! Accounting is two atomic adds per driver pass; the table of connections is locked only
//! to pick a victim or to wake paused readers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use crate::sparse::ShrinkSparse;

/// Fraction of the budget (per mille) from which expensive connections stop reading.
pub(crate) const PAUSE_READS: usize = 750;
/// Fraction (per mille) from which idle connections release their buffers at once.
pub(crate) const SHRINK_BUFFERS: usize = 850;
/// Fraction (per mille) from which new handshakes are refused with 503.
pub(crate) const REFUSE_HANDSHAKES: usize = 900;
/// Shedding stops once the holdings, less the victims', are below this fraction.
const SHED_TARGET: usize = 950;

/// A connection holding more than this (beyond its fixed state) counts as expensive.
pub(crate) const EXPENSIVE: usize = 64 * 1024;

/// What a connection costs at rest, charged for as long as it lives: tungstenite's read
/// buffer (the server's `read_buffer_size`) plus about 8 KiB of state (P7 measures
/// 17 KB of RSS per idle connection).
pub(crate) const CONNECTION_STATE: usize = 8 * 1024;

/// State per live session (P7 measures about 1 KB).
pub(crate) const SESSION_STATE: usize = 1024;

/// Pressure levels, from the budget's fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Below every threshold.
    Normal,
    /// Expensive connections stop reading.
    PauseReads,
    /// Idle buffers are released as well.
    ShrinkBuffers,
    /// New handshakes are refused as well.
    RefuseHandshakes,
    /// Connections are being shed.
    Shed,
}

/// Overload counters, for stats and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetStats {
    /// Bytes held for peers now, summed over connections and handshakes.
    pub held: usize,
    /// Highest `held` seen.
    pub peak: usize,
    /// The budget.
    pub limit: usize,
    /// Times a connection stopped reading for the budget.
    pub read_pauses: u64,
    /// Connections closed with 1013 to bring the server back under its budget.
    pub shed: u64,
}

/// The budget, shared by the server and every connection's driver.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limit: usize,
    held: AtomicUsize,
    peak: AtomicUsize,
    read_pauses: AtomicU64,
    shed: AtomicU64,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    charges: HashMap<u64, Arc<ChargeState>>,
    /// Drivers that stopped reading for the budget, woken when it falls below the mark.
    paused: Vec<Waker>,
}

/// The parts of a connection's holdings, each reported by whoever sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Part {
    /// Fixed state, transmit buffer: reported by the driver.
    Driver = 0,
    /// The protocol's buffers and sessions: reported by the driver, and by senders when
    /// the send buffer moved (a driver stalled on a slow reader does not run).
    Protocol = 1,
    /// A WebSocket message received in part: reported by the frame meter.
    Partial = 2,
}

#[derive(Debug, Default)]
struct ChargeState {
    /// The sum of `parts`.
    held: AtomicUsize,
    parts: [AtomicUsize; 3],
    /// Cumulative bytes delivered both ways, and its value at the last victim search.
    progress: AtomicU64,
    progress_seen: AtomicU64,
    shed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// One connection's (or handshake's) account. Dropping it returns what it held.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Budget,
    id: u64,
    state: Arc<ChargeState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            inner: Arc::new(Shared {
                limit: limit.max(1),
                held: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                read_pauses: AtomicU64::new(0),
                shed: AtomicU64::new(0),
                table: Mutex::new(Table::default()),
            }),
        }
    }

    /// Opens an account holding `initial` bytes.
    pub(crate) fn charge(&self, initial: usize) -> Charge {
        let state = Arc::new(ChargeState::default());
        let id = {
            let mut t = lock(&self.inner.table);
            let id = t.next;
            t.next = t.next.wrapping_add(1);
            t.charges.insert(id, state.clone());
            id
        };
        let charge = Charge {
            budget: self.clone(),
            id,
            state,
        };
        charge.set(Part::Driver, initial);
        charge
    }

    fn per_mille(&self, held: usize) -> usize {
        // u128: no overflow for any budget.
        let ratio = (held as u128)
            .saturating_mul(1000)
            .checked_div(self.inner.limit as u128)
            .unwrap_or(u128::MAX);
        usize::try_from(ratio).unwrap_or(usize::MAX)
    }

    /// The pressure level now.
    pub(crate) fn pressure(&self) -> Pressure {
        let held = self.inner.held.load(Ordering::Relaxed);
        match self.per_mille(held) {
            p if p >= 1000 => Pressure::Shed,
            p if p >= REFUSE_HANDSHAKES => Pressure::RefuseHandshakes,
            p if p >= SHRINK_BUFFERS => Pressure::ShrinkBuffers,
            p if p >= PAUSE_READS => Pressure::PauseReads,
            _ => Pressure::Normal,
        }
    }

    pub(crate) fn stats(&self) -> BudgetStats {
        let s = &self.inner;
        BudgetStats {
            held: s.held.load(Ordering::Relaxed),
            peak: s.peak.load(Ordering::Relaxed),
            limit: s.limit,
            read_pauses: s.read_pauses.load(Ordering::Relaxed),
            shed: s.shed.load(Ordering::Relaxed),
        }
    }

    /// Applies a change of `old` → `new` bytes to the total, waking paused readers when
    /// the total falls below the mark and shedding when it reaches the budget.
    fn update(&self, old: usize, new: usize) {
        let s = &self.inner;
        let total = if new >= old {
            let add = new.saturating_sub(old);
            s.held.fetch_add(add, Ordering::Relaxed).saturating_add(add)
        } else {
            let sub = old.saturating_sub(new);
            s.held.fetch_sub(sub, Ordering::Relaxed).saturating_sub(sub)
        };
        s.peak.fetch_max(total, Ordering::Relaxed);
        let level = self.per_mille(total);
        if new < old && level < PAUSE_READS {
            let paused = std::mem::take(&mut lock(&s.table).paused);
            paused.into_iter().for_each(Waker::wake);
        }
        if new > old && level >= 1000 {
            self.shed(total);
        }
    }

    /// Picks victims, most memory per byte of progress first, until what they hold brings
    /// the rest under [`SHED_TARGET`]. Victims already chosen count, so a burst of updates
    /// does not close more connections than the excess needs.
    fn shed(&self, total: usize) {
        let target = (self.inner.limit / 1000).saturating_mul(SHED_TARGET);
        let t = lock(&self.inner.table);
        let mut doomed: usize = t
            .charges
            .values()
            .filter(|c| c.shed.load(Ordering::Relaxed))
            .map(|c| c.held.load(Ordering::Relaxed))
            .sum();
        let mut candidates: Vec<(u128, &Arc<ChargeState>)> = t
            .charges
            .values()
            .filter(|c| !c.shed.load(Ordering::Relaxed))
            .map(|c| {
                let held = c.held.load(Ordering::Relaxed) as u128;
                let progress = c.progress.load(Ordering::Relaxed);
                let seen = c.progress_seen.swap(progress, Ordering::Relaxed);
                let made = u128::from(progress.saturating_sub(seen));
                // held² / (held + progress): memory, discounted by the bytes delivered
                // since the last look; an idle small connection costs its size, a bulk
                // transfer moving many times what it holds costs almost nothing.
                let cost = held
                    .saturating_mul(held)
                    .checked_div(held.saturating_add(made))
                    .unwrap_or(0);
                (cost, c)
            })
            .collect();
        candidates.sort_unstable_by_key(|(cost, _)| std::cmp::Reverse(*cost));
        for (_, victim) in candidates {
            if total.saturating_sub(doomed) < target {
                break;
            }
            victim.shed.store(true, Ordering::Relaxed);
            doomed = doomed.saturating_add(victim.held.load(Ordering::Relaxed));
            self.inner.shed.fetch_add(1, Ordering::Relaxed);
            if let Some(w) = lock(&victim.waker).take() {
                w.wake();
            }
        }
    }
}

impl Charge {
    /// Reports one part of what the connection holds now.
    pub(crate) fn set(&self, part: Part, bytes: usize) {
        let Some(slot) = self.state.parts.get(part as usize) else {
            return;
        };
        let old = slot.swap(bytes, Ordering::Relaxed);
        if old == bytes {
            return;
        }
        let held = if bytes > old {
            let add = bytes.saturating_sub(old);
            self.state
                .held
                .fetch_add(add, Ordering::Relaxed)
                .saturating_add(add)
        } else {
            let sub = old.saturating_sub(bytes);
            self.state
                .held
                .fetch_sub(sub, Ordering::Relaxed)
                .saturating_sub(sub)
        };
        // The budget sees the same change as the sum.
        let before = if bytes > old {
            held.saturating_sub(bytes.saturating_sub(old))
        } else {
            held.saturating_add(old.saturating_sub(bytes))
        };
        self.budget.update(before, held);
    }

    /// Test shorthand: the whole holding as one part.
    #[cfg(test)]
    fn set_held(&self, bytes: usize) {
        self.set(Part::Driver, bytes);
    }

    #[cfg(test)]
    fn set_partial(&self, bytes: usize) {
        self.set(Part::Partial, bytes);
    }

    /// Reports cumulative payload bytes delivered in either direction.
    pub(crate) fn set_progress(&self, bytes: u64) {
        self.state.progress.store(bytes, Ordering::Relaxed);
    }

    /// Whether this connection may read now. If not, `waker` is woken when it may.
    pub(crate) fn may_read(&self, waker: &Waker) -> bool {
        let held = self.state.held.load(Ordering::Relaxed);
        if held <= EXPENSIVE.saturating_add(CONNECTION_STATE)
            || self.budget.pressure() < Pressure::PauseReads
        {
            return true;
        }
        let mut t = lock(&self.budget.inner.table);
        // Checked again under the lock that wakes: no wake-up is lost in between.
        if self.budget.pressure() < Pressure::PauseReads {
            return true;
        }
        if !t.paused.iter().any(|w| w.will_wake(waker)) {
            t.paused.push(waker.clone());
            self.budget
                .inner
                .read_pauses
                .fetch_add(1, Ordering::Relaxed);
        }
        false
    }

    /// Whether idle buffers should go back now.
    pub(crate) fn shrink_idle(&self) -> bool {
        self.budget.pressure() >= Pressure::ShrinkBuffers
    }

    /// Whether the budget chose this connection to close. Registers `waker` for the choice.
    pub(crate) fn is_shed(&self, waker: &Waker) -> bool {
        if self.state.shed.load(Ordering::Relaxed) {
            return true;
        }
        let mut slot = lock(&self.state.waker);
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
        // Checked again after registering, for a choice made in between.
        self.state.shed.load(Ordering::Relaxed)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let held = self.state.held.swap(0, Ordering::Relaxed);
        {
            let mut t = lock(&self.budget.inner.table);
            t.charges.remove(&self.id);
            t.charges.shrink_if_sparse();
        }
        self.budget.update(held, 0);
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

    #[test]
    fn the_table_of_accounts_shrinks_back_after_a_flood() {
        let budget = Budget::new(1 << 30);
        let charges: Vec<Charge> = (0..5000).map(|_| budget.charge(100)).collect();
        assert!(lock(&budget.inner.table).charges.capacity() >= 5000);
        drop(charges);
        let t = lock(&budget.inner.table);
        assert!(t.charges.is_empty());
        assert!(t.charges.capacity() <= 128, "{}", t.charges.capacity());
    }

    #[test]
    fn levels_follow_the_fill_and_drops_return_everything() {
        let budget = Budget::new(1000);
        let a = budget.charge(100);
        assert_eq!(budget.pressure(), Pressure::Normal);
        a.set_held(760);
        assert_eq!(budget.pressure(), Pressure::PauseReads);
        a.set_held(860);
        assert_eq!(budget.pressure(), Pressure::ShrinkBuffers);
        a.set_partial(50);
        assert_eq!(budget.pressure(), Pressure::RefuseHandshakes);
        assert_eq!(budget.stats().held, 910);
        a.set_partial(0);
        assert_eq!(budget.stats().held, 860);
        drop(a);
        assert_eq!(budget.stats().held, 0);
        assert_eq!(budget.stats().peak, 910);
    }

    #[test]
    fn the_costliest_per_progress_is_shed_first_and_only_as_many_as_needed() {
        let budget = Budget::new(1_000_000);
        let honest = budget.charge(300_000);
        honest.set_progress(10_000_000);
        let idle_hog = budget.charge(400_000);
        let small = budget.charge(100_000);
        let noop = Waker::noop();
        assert!(!honest.is_shed(noop) && !idle_hog.is_shed(noop));
        // The honest connection grows while it delivers; the hog delivers nothing.
        honest.set_progress(20_000_000);
        honest.set_held(550_000);
        // 1,050,000 held: over the budget. Shedding the hog alone brings it to 650,000.
        assert!(idle_hog.is_shed(noop));
        assert!(!honest.is_shed(noop));
        assert!(!small.is_shed(noop));
        assert_eq!(budget.stats().shed, 1);
        drop(idle_hog);
        assert_eq!(budget.stats().held, 650_000);
    }

    #[test]
    fn expensive_readers_pause_under_pressure_and_wake_when_it_eases() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let budget = Budget::new(1_000_000);
        let cheap = budget.charge(10_000);
        let costly = budget.charge(200_000);
        assert!(costly.may_read(&waker));
        let other = budget.charge(600_000);
        // 810,000: pressure. The costly one pauses, the cheap one reads on.
        assert!(cheap.may_read(&waker));
        assert!(!costly.may_read(&waker));
        assert_eq!(budget.stats().read_pauses, 1);
        drop(other);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(costly.may_read(&waker));
    }
}

//! Time as an input: a monotonic timestamp owned by this crate.
//!
//! `mux-proto` never reads a clock. The driver converts its own clock (tokio's `Instant`, a
//! browser's `performance.now()`, a test's virtual clock) into [`Timestamp`]s and passes them in.

use std::time::Duration;

/// Microseconds since an arbitrary origin chosen by the driver. Only differences matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The origin.
    pub const ZERO: Timestamp = Timestamp(0);
    /// A time later than any deadline; used for "never".
    pub const NEVER: Timestamp = Timestamp(u64::MAX);

    /// A timestamp `micros` microseconds after the origin.
    pub const fn from_micros(micros: u64) -> Timestamp {
        Timestamp(micros)
    }

    /// A timestamp `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Timestamp {
        Timestamp(millis.saturating_mul(1000))
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at [`Timestamp::NEVER`].
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(micros))
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;

    fn add(self, d: Duration) -> Timestamp {
        self.saturating_add(d)
    }
}

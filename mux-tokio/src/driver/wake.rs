//! Wakers collected under the connection lock and woken after it is released, so a woken
//! task does not immediately contend for the lock its waker still holds (tokio's
//! `notify_waiters` does the same).

use std::task::Waker;

/// How many wakers fit without allocating; past that they spill into a `Vec`.
const INLINE: usize = 16;

/// The wakers to wake once the lock is dropped. Every one of them is woken after the
/// unlock, never under it: a waker may act at once (a topic subscriber queues its next
/// message from its `wake`), and it would take this same lock.
#[derive(Default)]
pub(crate) struct WakeList {
    wakers: [Option<Waker>; INLINE],
    len: usize,
    /// Wakers past `INLINE` (an end of many sessions at once): rare, so allocated on use.
    spill: Vec<Waker>,
    /// A session or the connection ended: `closed()` waiters must look.
    pub(crate) ended: bool,
}

impl WakeList {
    pub(crate) fn push(&mut self, waker: Waker) {
        match self.wakers.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(waker);
                self.len = self.len.saturating_add(1);
            }
            None => self.spill.push(waker),
        }
    }

    /// Asks for the connection's `ended` notification once the lock is released.
    pub(crate) fn push_notify_later(&mut self) {
        self.ended = true;
    }

    /// Wakes everything collected. Call after the lock is released.
    pub(crate) fn wake_all(&mut self) {
        for slot in self.wakers.iter_mut().take(self.len) {
            if let Some(waker) = slot.take() {
                waker.wake();
            }
        }
        self.len = 0;
        for waker in std::mem::take(&mut self.spill) {
            waker.wake();
        }
    }
}

impl Drop for WakeList {
    fn drop(&mut self) {
        self.wake_all();
    }
}

/// Stores `waker` in `slot` unless the one already there wakes the same task.
pub(crate) fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(old) if old.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// Adds `waker` to `list` unless a waker there wakes the same task. The list holds one
/// waker per task blocked on the same thing (senders of one session): bounded by tasks.
pub(crate) fn register_in(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

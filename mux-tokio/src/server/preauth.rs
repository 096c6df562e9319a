//! Places for connections that have not finished their handshake. They have their own cap,
//! below the global one, and when it is full the oldest unfinished handshake makes room for
//! the newest (the classic slowloris answer): an honest client finishes within a round trip
//! or two, so it is never the oldest for long, while sockets that trickle their head or
//! send nothing are the first to go. Authenticated connections never occupy these places,
//! so no number of unauthenticated sockets can shed them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The table of unfinished handshakes, oldest first.
#[derive(Debug, Clone)]
pub(crate) struct PreAuth {
    inner: Arc<Mutex<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    /// Handshakes in progress by arrival; each one's signal to give up its place.
    waiting: BTreeMap<u64, Arc<Notify>>,
    next: u64,
    cap: usize,
    evicted: u64,
}

/// One handshake's place; dropping it (handshake done or failed) frees the place.
#[derive(Debug)]
pub(crate) struct Place {
    table: PreAuth,
    id: u64,
    evict: Arc<Notify>,
}

impl PreAuth {
    pub(crate) fn new(cap: usize) -> Self {
        PreAuth {
            inner: Arc::new(Mutex::new(Table {
                cap: cap.max(1),
                ..Table::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a new handshake, evicting the oldest one when all are taken.
    pub(crate) fn enter(&self) -> Place {
        let mut t = self.lock();
        while t.waiting.len() >= t.cap {
            let Some((_, oldest)) = t.waiting.pop_first() else {
                break;
            };
            // `notify_one` keeps a permit, so the eviction is not lost if the handshake is
            // between two awaits.
            oldest.notify_one();
            t.evicted = t.evicted.saturating_add(1);
        }
        let id = t.next;
        t.next = t.next.wrapping_add(1);
        let evict = Arc::new(Notify::new());
        t.waiting.insert(id, evict.clone());
        Place {
            table: self.clone(),
            id,
            evict,
        }
    }

    /// Handshakes in progress now.
    pub(crate) fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Handshakes evicted so far.
    #[cfg(test)]
    pub(crate) fn evicted(&self) -> u64 {
        self.lock().evicted
    }
}

impl Place {
    /// Resolves when a newer handshake has taken this place.
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.table.lock().waiting.remove(&self.id);
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
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn is_evicted(place: &Place) -> bool {
        let mut f = pin!(place.evicted());
        matches!(
            f.as_mut().poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(())
        )
    }

    #[test]
    fn the_oldest_makes_room_and_finished_ones_leave() {
        let table = PreAuth::new(2);
        let a = table.enter();
        let b = table.enter();
        assert_eq!(table.len(), 2);
        let c = table.enter();
        assert!(is_evicted(&a));
        assert!(!is_evicted(&b) && !is_evicted(&c));
        assert_eq!((table.len(), table.evicted()), (2, 1));
        // A handshake that finished gives its place back: nobody is evicted for the next.
        drop(b);
        let d = table.enter();
        assert!(!is_evicted(&c) && !is_evicted(&d));
        drop((a, c, d));
        assert_eq!(table.len(), 0);
    }
}

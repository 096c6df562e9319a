//! The receive arena: small received messages are copied into shared chunks instead of one
//! allocation each (BENCHMARKS.md P6), within a stated bound on what the chunks can pin.
//!
//! A one-frame message handed out as a slice of its WebSocket message would keep that whole
//! message alive (spec/sessions.md#must-slices-bounded), so small messages are copied. A copy
//! of its own costs an allocation per message; a copy into a [`CHUNK`]-byte chunk costs one
//! per chunk, and nothing once the chunks are recycled: a chunk whose messages have all been
//! dropped is reused in place (`BytesMut::try_reclaim`, which succeeds only when no `Bytes`
//! cut from the chunk is left).
//!
//! **The bound.** A message in a chunk keeps the whole chunk alive, whatever its own size,
//! so the arena keeps a handle to every chunk it has cut messages from and cuts a new one
//! only while all of them together stay within the larger of [`BASE`] (32 KiB) and what the
//! receive buffer is charged at that moment (the caller caps that at the receive buffer's
//! cap). A chunk is cut only when no held one can be reused, so the chunks the arena keeps
//! alive, whoever holds their messages and for however long, never exceed
//! `max(32 KiB, max_recv_buffer)`: within the "twice the receive cap" of the connection's
//! memory budget (spec/security.md#memory). Messages queued unread are charged at least
//! their size, so a queue of small messages grows the arena only as far as its charge; a
//! few held tiny messages pinning otherwise empty chunks stop it at the larger of [`BASE`]
//! and what is charged, and past that the caller copies each message on its own, as before. Handles
//! are dropped only for chunks no message holds ([`Arena::release_free`]), or all at once
//! when the connection ends (no chunk is cut after that).
//!
//! **Work.** Each copy looks at the chunk being filled and, once that is full, at most two
//! of the oldest chunks (messages are mostly read in order, so the oldest frees first; a
//! held one is rotated to the back), so a copy is O(1) however many chunks are held.
//!
//! **Idle.** A chunk no message holds is freed once the arena has gone unused for
//! [`IDLE`] (the connection's timer looks), so an idle connection holds none (BENCHMARKS.md
//! P7), and a busy one allocates none.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::time::Timestamp;

/// Bytes in one chunk: small, so that one held message pins little, and 4 messages of the
/// largest size the arena takes.
pub(crate) const CHUNK: usize = 8 * 1024;

/// What the arena may always have alive, whatever the receive buffer is charged: 4 chunks.
pub(crate) const BASE: usize = 4 * CHUNK;

/// Largest message copied into the arena: larger ones are rare enough that an allocation of
/// their own is cheap next to their bytes, and a chunk always serves several messages.
pub(crate) const MAX_MESSAGE: usize = CHUNK / 4;

/// How long the arena must go unused before its free chunks are freed.
pub(crate) const IDLE: Duration = Duration::from_secs(1);

/// Oldest chunks looked at for reuse per copy once the one being filled is full.
const LOOKS: usize = 2;

/// Chunks of received small messages, recycled as the application drops them.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    /// The chunk being filled. Empty (what is written is split off at once): its spare
    /// capacity is where the next message goes.
    current: Option<BytesMut>,
    /// Full chunks that messages may still hold, oldest first.
    full: VecDeque<BytesMut>,
    /// When a message was last copied in.
    last_used: Timestamp,
}

impl Arena {
    /// [`Arena::copy`] into the connection's arena, boxed on first use; `None` (and no
    /// arena) for a payload the arena does not take.
    pub(crate) fn copy_into(
        arena: &mut Option<Box<Arena>>,
        payload: &[u8],
        charged: u64,
        now: Timestamp,
    ) -> Option<Bytes> {
        if payload.is_empty() {
            // Pins nothing and allocates nothing.
            return Some(Bytes::new());
        }
        if payload.len() > MAX_MESSAGE {
            return None;
        }
        arena
            .get_or_insert_with(Box::default)
            .copy(payload, charged, now)
    }

    /// Copies `payload` into a chunk and returns it as its own `Bytes`; `charged` is what
    /// the receive buffer is charged now (capped at its cap by the caller). `None` when the
    /// payload is larger than [`MAX_MESSAGE`], or no chunk has room and a new one would
    /// take the arena past its bound: the caller copies or slices it as without the arena.
    pub(crate) fn copy(&mut self, payload: &[u8], charged: u64, now: Timestamp) -> Option<Bytes> {
        let len = payload.len();
        if len == 0 {
            return Some(Bytes::new());
        }
        if len > MAX_MESSAGE {
            return None;
        }
        let fits = self.current.as_mut().is_some_and(|c| c.try_reclaim(len));
        if !fits {
            if let Some(full) = self.current.take() {
                self.full.push_back(full);
            }
            self.current = self.reuse_oldest().or_else(|| self.cut(charged));
        }
        let chunk = self.current.as_mut()?;
        chunk.extend_from_slice(payload);
        self.last_used = now;
        Some(chunk.split().freeze())
    }

    /// The oldest full chunk if no message holds it any more, looking at [`LOOKS`] at most;
    /// a held one goes to the back, so one held for long does not stop the others' reuse.
    fn reuse_oldest(&mut self) -> Option<BytesMut> {
        for _ in 0..LOOKS {
            let mut oldest = self.full.pop_front()?;
            if oldest.try_reclaim(CHUNK) {
                return Some(oldest);
            }
            self.full.push_back(oldest);
        }
        None
    }

    /// A new chunk, if the arena stays within its bound with it.
    fn cut(&mut self, charged: u64) -> Option<BytesMut> {
        let bound = u64::try_from(BASE).unwrap_or(u64::MAX).max(charged);
        let after = u64::try_from(self.allocated().saturating_add(CHUNK)).unwrap_or(u64::MAX);
        (after <= bound).then(|| BytesMut::with_capacity(CHUNK))
    }

    /// For the connection's timer: once nothing was copied in for [`IDLE`], frees the
    /// chunks no message holds ([`Arena::release_free`]). Returns when to look again, if
    /// chunks remain.
    pub(crate) fn release_unused(&mut self, now: Timestamp) -> Option<Timestamp> {
        let idle_at = self.last_used.saturating_add(IDLE);
        if now < idle_at {
            return Some(idle_at);
        }
        self.release_free().then(|| now.saturating_add(IDLE))
    }

    /// Frees the chunks no message holds. A held one stays: dropping its handle would let
    /// the arena cut a new chunk while the old one is still alive, past the bound. Returns
    /// whether chunks remain.
    pub(crate) fn release_free(&mut self) -> bool {
        if self.current.as_mut().is_some_and(|c| c.try_reclaim(CHUNK)) {
            self.current = None;
        }
        self.full.retain_mut(|chunk| !chunk.try_reclaim(CHUNK));
        if self.full.is_empty() {
            self.full = VecDeque::new();
        } else {
            self.full.shrink_to_fit();
        }
        self.current.is_some() || !self.full.is_empty()
    }

    /// Bytes the chunks take (held by messages or not), for a host's memory accounting.
    pub(crate) fn allocated(&self) -> usize {
        self.full
            .len()
            .saturating_add(usize::from(self.current.is_some()))
            .saturating_mul(CHUNK)
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

    const T0: Timestamp = Timestamp::ZERO;

    /// Whether `message` lies inside one of the chunks the arena holds. A chunk's handle
    /// points at its spare capacity, so its allocation starts `CHUNK - capacity` before.
    fn inside_a_chunk(message: &Bytes, arena: &Arena) -> bool {
        let start = message.as_ptr() as usize;
        arena.current.iter().chain(&arena.full).any(|c| {
            let base = c.as_ptr() as usize - (CHUNK - c.capacity());
            start >= base && start + message.len() <= base + CHUNK
        })
    }

    #[test]
    fn messages_read_and_dropped_reuse_one_chunk() {
        let mut arena = Arena::default();
        for i in 0..10_000u32 {
            let m = arena.copy(&i.to_be_bytes().repeat(100), 0, T0).unwrap();
            assert_eq!(&m[..4], &i.to_be_bytes());
            drop(m);
        }
        assert_eq!(arena.allocated(), CHUNK, "one chunk, recycled");
    }

    #[test]
    fn held_tiny_messages_pin_at_most_the_base() {
        let mut arena = Arena::default();
        let mut held = Vec::new();
        let mut declined = 0;
        // One byte held out of every chunk's worth, read messages around it, nothing charged:
        // the worst case for what a few bytes pin.
        for _ in 0..10_000 {
            match arena.copy(b"x", 0, T0) {
                Some(m) => held.push(m),
                None => declined += 1,
            }
            for _ in 0..(CHUNK / MAX_MESSAGE) {
                let _ = arena.copy(&[0; MAX_MESSAGE], 0, T0);
            }
        }
        assert_eq!(arena.allocated(), BASE);
        assert!(
            declined > 9_000,
            "the arena declines once every chunk is held"
        );
        // Every held message lies in one of the chunks the arena holds: together they pin
        // no more than BASE.
        assert!(held.iter().all(|m| inside_a_chunk(m, &arena)));
        // Dropped, the chunks are taken back without a new one.
        drop(held);
        for _ in 0..100 {
            assert!(arena.copy(&[1; MAX_MESSAGE], 0, T0).is_some());
        }
        assert_eq!(arena.allocated(), BASE);
    }

    #[test]
    fn a_charged_queue_grows_the_arena_only_as_far_as_its_charge() {
        let mut arena = Arena::default();
        let mut queued = Vec::new();
        let mut charged = 0u64;
        // 10,000 messages of 64 B queued unread, each charged its size plus 64 B.
        for _ in 0..10_000 {
            queued.push(
                arena
                    .copy(&[7; 64], charged, T0)
                    .expect("within the charge"),
            );
            charged += 64 + 64;
            assert!(arena.allocated() as u64 <= charged.max(BASE as u64));
        }
        assert!(queued.iter().all(|m| inside_a_chunk(m, &arena)));
        // Read: the charge is gone, the chunks are reused and no new one is cut.
        let before = arena.allocated();
        drop(queued);
        for _ in 0..10_000 {
            drop(arena.copy(&[8; 64], 0, T0).unwrap());
        }
        assert_eq!(arena.allocated(), before);
    }

    #[test]
    fn one_message_held_for_long_does_not_stop_reuse() {
        let mut arena = Arena::default();
        let held = arena.copy(b"kept", 0, T0).unwrap();
        for _ in 0..100_000 {
            drop(
                arena
                    .copy(&[0; 1024], 0, T0)
                    .expect("a free chunk is found"),
            );
        }
        assert!(arena.allocated() <= 2 * CHUNK, "{}", arena.allocated());
        assert_eq!(&held[..], b"kept");
    }

    #[test]
    fn large_and_empty_messages_stay_out() {
        let mut slot = None;
        assert!(Arena::copy_into(&mut slot, &[0; MAX_MESSAGE + 1], 0, T0).is_none());
        assert!(Arena::copy_into(&mut slot, b"", 0, T0).unwrap().is_empty());
        assert!(slot.is_none(), "neither makes an arena");
        let mut arena = Arena::default();
        assert!(arena.copy(&[0; MAX_MESSAGE + 1], 0, T0).is_none());
        assert!(arena.copy(b"", 0, T0).unwrap().is_empty());
        assert_eq!(arena.allocated(), 0, "neither cuts a chunk");
    }

    #[test]
    fn an_idle_arena_frees_what_no_message_holds() {
        let mut arena = Arena::default();
        let held = arena.copy(b"held", 0, T0).unwrap();
        for _ in 0..(CHUNK / MAX_MESSAGE) {
            let _ = arena.copy(&[0; MAX_MESSAGE], 0, T0);
        }
        assert_eq!(arena.allocated(), 2 * CHUNK);
        // Used less than a period ago: kept, looked at again a period after the last use.
        let later = T0.saturating_add(IDLE / 2);
        assert_eq!(arena.release_unused(later), Some(T0.saturating_add(IDLE)));
        assert_eq!(arena.allocated(), 2 * CHUNK);
        // Unused for a period: the free chunk goes, the held one stays (bound).
        let idle = T0.saturating_add(IDLE);
        assert_eq!(arena.release_unused(idle), Some(idle.saturating_add(IDLE)));
        assert_eq!(arena.allocated(), CHUNK);
        drop(held);
        assert_eq!(arena.release_unused(idle), None, "nothing left");
        assert_eq!(arena.allocated(), 0);
        assert_eq!(arena.full.capacity(), 0);
    }
}

//! The session table: live sessions by ID, and bounded tombstones for recently closed ones.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};

use super::Session;
use crate::id::SessionId;
use crate::time::Timestamp;

/// Hashes a session ID with a per-connection seed and a full-avalanche finalizer, so IDs a
/// peer chooses (any increasing sequence) spread evenly without SipHash's cost.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SeededIdHash(u64);

impl SeededIdHash {
    pub(crate) fn new(seed: u64) -> Self {
        SeededIdHash(seed)
    }
}

impl BuildHasher for SeededIdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

/// The hasher built by [`SeededIdHash`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // murmur3's fmix64 over seed ^ n: every input bit affects every output bit.
        let mut h = self.0 ^ n;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Live sessions plus tombstones. Both are bounded: live sessions by the session limits
/// (checked before insertion), tombstones by `max_tombstones` (oldest evicted first).
#[derive(Debug)]
pub(crate) struct Store {
    /// Boxed: a slot is 16 bytes, not a 320-byte session, so the table stays in cache with
    /// thousands of sessions (finding one costs no miss of its own), its empty slots cost
    /// next to nothing (10,000 sessions inline took 16,384 slots, 8.5 MB), and growing it
    /// moves pointers rather than sessions (benches/dispatch.rs).
    live: HashMap<u32, Box<Session>, SeededIdHash>,
    /// Tombstones, each with the late DATA frames it still absorbs for free.
    tombstones: HashMap<u32, u32, SeededIdHash>,
    /// Tombstones in expiry order; every entry has the same TTL, so this is FIFO.
    expiry: VecDeque<(SessionId, Timestamp)>,
    max_tombstones: usize,
}

impl Store {
    pub(crate) fn new(seed: u64, max_tombstones: u32) -> Self {
        let hash = SeededIdHash::new(seed);
        Store {
            live: HashMap::with_hasher(hash),
            tombstones: HashMap::with_hasher(hash),
            expiry: VecDeque::new(),
            max_tombstones: usize::try_from(max_tombstones).unwrap_or(usize::MAX),
        }
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<&Session> {
        self.live.get(&id.0).map(|s| &**s)
    }

    pub(crate) fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.live.get_mut(&id.0).map(|s| &mut **s)
    }

    pub(crate) fn insert(&mut self, session: Session) {
        self.live.insert(session.id.0, Box::new(session));
    }

    pub(crate) fn remove(&mut self, id: SessionId) -> Option<Session> {
        self.live.remove(&id.0).map(|s| *s)
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.live.keys().map(|k| SessionId(*k))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Session> + '_ {
        self.live.values().map(|s| &**s)
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Session> + '_ {
        self.live.drain().map(|(_, s)| *s)
    }

    /// Remembers a closed session until `expires`, evicting the oldest tombstone when full.
    /// Its first `free_frames` late DATA frames are absorbed for free.
    pub(crate) fn bury(&mut self, id: SessionId, expires: Timestamp, free_frames: u32) {
        if self.max_tombstones == 0 {
            return;
        }
        if self.expiry.len() >= self.max_tombstones {
            if let Some((old, _)) = self.expiry.pop_front() {
                self.tombstones.remove(&old.0);
            }
        }
        if let Entry::Vacant(slot) = self.tombstones.entry(id.0) {
            slot.insert(free_frames);
            self.expiry.push_back((id, expires));
        }
    }

    #[cfg(test)]
    pub(crate) fn is_buried(&self, id: SessionId) -> bool {
        self.tombstones.contains_key(&id.0)
    }

    /// Absorbs one late DATA frame for `id` for free if its tombstone is still kept and has
    /// allowance left; false means the frame is charged (spec/sessions.md#late-frames).
    pub(crate) fn absorb_late_data(&mut self, id: SessionId) -> bool {
        match self.tombstones.get_mut(&id.0) {
            Some(left) if *left > 0 => {
                *left = left.saturating_sub(1);
                true
            }
            _ => false,
        }
    }

    /// Frees the tombstone tables' buffers once none is kept.
    pub(crate) fn shrink_to_fit(&mut self) {
        if self.expiry.is_empty() {
            self.expiry.shrink_to_fit();
            self.tombstones.shrink_to_fit();
        }
    }

    pub(crate) fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// The earliest tombstone expiry.
    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        self.expiry.front().map(|(_, t)| *t)
    }

    /// Forgets tombstones that expired at or before `now`.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        while let Some(&(id, at)) = self.expiry.front() {
            if at > now {
                break;
            }
            self.expiry.pop_front();
            self.tombstones.remove(&id.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_bounded_and_expire() {
        let mut store = Store::new(7, 3);
        for i in 1..=5u32 {
            store.bury(SessionId(i), Timestamp::from_millis(u64::from(i)), 0);
        }
        assert_eq!(store.tombstone_count(), 3);
        assert!(!store.is_buried(SessionId(1)));
        assert!(store.is_buried(SessionId(5)));
        store.expire(Timestamp::from_millis(4));
        assert_eq!(store.tombstone_count(), 1);
        assert_eq!(store.next_expiry(), Some(Timestamp::from_millis(5)));
    }

    #[test]
    fn a_tombstone_absorbs_its_allowance_of_late_data_then_stops() {
        let mut store = Store::new(7, 3);
        store.bury(SessionId(1), Timestamp::from_millis(10), 2);
        assert!(store.absorb_late_data(SessionId(1)));
        assert!(store.absorb_late_data(SessionId(1)));
        assert!(!store.absorb_late_data(SessionId(1)));
        assert!(store.is_buried(SessionId(1)));
        assert!(!store.absorb_late_data(SessionId(3)));
    }

    #[test]
    fn hash_spreads_ids_that_differ_only_in_high_bits() {
        let build = SeededIdHash::new(0x1234);
        let mut low_bits = std::collections::HashSet::new();
        for k in 0..64u32 {
            let mut h = build.build_hasher();
            h.write_u32(1 | (k << 20));
            low_bits.insert(h.finish() & 0xff);
        }
        assert!(low_bits.len() > 40, "{}", low_bits.len());
    }
}

//! Giving back the capacity a table grew to in a burst. A `HashMap` or `Vec` keeps every
//! bucket it ever allocated: after 2,000 connections from 2,000 addresses have come and
//! gone, the server's per-address tables would hold room for 2,000 until the process ends,
//! and under glibc those tables are what keeps the freed connection memory around them
//! resident. Each table shrinks once it is used below a quarter of its capacity, to twice
//! what it holds, so a table that grows and shrinks again pays for each rehash with at
//! least as many inserts or removals (amortised O(1)), and small tables are left alone.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Capacity below which a table is never shrunk: not worth a rehash.
pub(crate) const MIN_CAPACITY: usize = 64;

/// A table whose unused capacity can be given back.
pub(crate) trait ShrinkSparse {
    /// Shrinks the table to twice its length (at least [`MIN_CAPACITY`]) when it holds less
    /// than a quarter of its capacity. Call it after removing entries.
    fn shrink_if_sparse(&mut self);
}

/// Whether a table of `len` entries in `capacity` should shrink.
fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity > MIN_CAPACITY && len < capacity / 4
}

/// The capacity a sparse table shrinks to.
fn target(len: usize) -> usize {
    len.saturating_mul(2).max(MIN_CAPACITY)
}

impl<K: Eq + Hash, V, S: BuildHasher> ShrinkSparse for HashMap<K, V, S> {
    /// A map's `capacity()` counts neither its free buckets' tombstones nor the load-factor
    /// headroom, so it may read a little low after removals: the map then shrinks a little
    /// later, never earlier.
    fn shrink_if_sparse(&mut self) {
        if is_sparse(self.len(), self.capacity()) {
            self.shrink_to(target(self.len()));
        }
    }
}

impl<T> ShrinkSparse for Vec<T> {
    fn shrink_if_sparse(&mut self) {
        if is_sparse(self.len(), self.capacity()) {
            self.shrink_to(target(self.len()));
        }
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
    fn a_table_emptied_after_a_burst_gives_its_capacity_back() {
        let mut map: HashMap<u32, u64> = HashMap::new();
        for k in 0..10_000 {
            map.insert(k, 0);
        }
        let grown = map.capacity();
        assert!(grown >= 10_000);
        for k in 0..10_000 {
            map.remove(&k);
            map.shrink_if_sparse();
        }
        assert!(map.is_empty());
        assert!(map.capacity() <= 2 * MIN_CAPACITY, "{}", map.capacity());
    }

    #[test]
    fn a_table_in_use_keeps_its_room() {
        let mut v: Vec<u64> = Vec::with_capacity(1000);
        v.extend(0..1000);
        // Down to 30 %: more than a quarter is still used, no reallocation.
        v.truncate(300);
        v.shrink_if_sparse();
        assert_eq!(v.capacity(), 1000);
        // Below a quarter: down to twice the length.
        v.truncate(200);
        v.shrink_if_sparse();
        assert_eq!(v.capacity(), 400);
        // A small table is never shrunk.
        let mut small: Vec<u8> = Vec::with_capacity(MIN_CAPACITY);
        small.push(1);
        small.shrink_if_sparse();
        assert_eq!(small.capacity(), MIN_CAPACITY);
    }

    #[test]
    fn a_vec_shrinks_to_twice_its_length() {
        let mut v: Vec<u64> = (0..4096).collect();
        v.truncate(100);
        v.shrink_if_sparse();
        assert!(
            v.capacity() >= 100 && v.capacity() <= 200,
            "{}",
            v.capacity()
        );
    }
}

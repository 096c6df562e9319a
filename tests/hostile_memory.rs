//! Threat catalogue, SM layer, memory (baseline B.b): under each attack, the bytes a
//! `Connection` really holds — counted by a `#[global_allocator]`, not taken from its own
//! accounting — stay within a budget declared from its configuration, and return to the
//! baseline when the attack ends.
//!
//! The declared budget of one connection (see [`budget`]): twice the receive-buffer cap (a
//! held message may keep alive up to twice what it is charged, spec/sessions.md#receive-
//! buffer), the send-buffer cap, 1 KiB of state per session it may have (live or pending),
//! 64 bytes per tombstone, 256 bytes per queued control frame up to the reply bound, and
//! 64 KiB besides. Catalogue volumes are scaled to 100k frames.
//!
//! This lives in the root package because a global allocator needs `unsafe impl`, which the
//! workspace lints forbid in mux-proto's own targets (the root package enables mux-proto's
//! `fuzzing` feature, which includes `testing`, for tests/fuzz_corpus.rs).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use bytes::Bytes;
use mux_proto::frame::{Frame, Setting, Settings};
use mux_proto::testing::{frames, RawPeer};
use mux_proto::{CloseCode, Config, Grant, SessionId, Side};

// ---- the counting allocator: live bytes and allocations, per thread --------------------

struct Counting;

thread_local! {
    /// Bytes allocated minus bytes freed by this thread (frees of memory another thread
    /// allocated count too; each test here runs on one thread).
    static LIVE: Cell<i64> = const { Cell::new(0) };
    /// Allocations (alloc, alloc_zeroed, realloc) made by this thread.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn record(delta: i64, allocation: bool) {
    // `try_with`: the thread-locals may already be gone while the thread exits.
    let _ = LIVE.try_with(|n| n.set(n.get() + delta));
    if allocation {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are const-initialised thread-local `Cell`s without destructors, so touching them
// never allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as i64, true);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as i64, true);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size as i64 - layout.size() as i64, true);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-(layout.size() as i64), false);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> i64 {
    LIVE.with(Cell::get)
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// ---- the declared budget -----------------------------------------------------------------

/// What one connection with configuration `c` may hold at most, in bytes.
fn budget(c: &Config) -> i64 {
    let l = &c.limits;
    let sessions = i64::from(l.max_sessions) + i64::from(l.max_pending_opens);
    let reply_bound = sessions + i64::from(l.control_budget) + 64;
    2 * l.max_recv_buffer as i64
        + l.max_send_buffer as i64
        + sessions * 1024
        + i64::from(l.max_tombstones) * 64
        + reply_bound * 256
        + 64 * 1024
}

fn quiet(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    c.timeouts.keepalive_interval = None;
    c.timeouts.session_idle = None;
    f(&mut c);
    c
}

/// Tracks the most live bytes seen above a starting point.
struct Peak {
    start: i64,
    most: i64,
}

impl Peak {
    fn new() -> Peak {
        let start = live();
        Peak { start, most: 0 }
    }

    fn sample(&mut self) -> i64 {
        let now = live() - self.start;
        self.most = self.most.max(now);
        now
    }
}

/// Drives the connection to quiescence: output read, tombstones expired.
fn settle(peer: &mut RawPeer) {
    peer.collect();
    peer.received.clear();
    peer.events.clear();
    peer.advance(peer.conn.config().timeouts.tombstone_ttl);
    peer.received.clear();
    peer.events.clear();
}

// ---- row 6: zero-length headers -------------------------------------------------------------

/// Row 6 (CVE-2019-9516): 100k open/close cycles (1M scaled) with empty metadata and an empty
/// message each, in two identical rounds of 50k. Each cycle costs O(1) allocations, nothing
/// accumulates (once tombstones expire, the second round leaves exactly what the first
/// left: queues and tables keep their working capacity, nothing more), and the peak stays
/// within the budget.
#[test]
fn open_close_cycles_with_empty_entries_leave_nothing_behind() {
    let config = quiet(|c| {
        c.limits.control_budget = u32::MAX;
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
    });
    let declared = budget(&config);
    let mut peer = RawPeer::server(config);
    let cycle = |peer: &mut RawPeer, id: u32| {
        peer.deliver([
            frames::open(id, ""),
            frames::data(id, b"", true),
            frames::reset(id, CloseCode::CANCELLED),
        ]);
        if id % 512 == 1 {
            peer.collect();
            peer.received.clear();
            peer.events.clear();
        }
    };
    let start = live();
    let mut peak = Peak::new();
    let before = allocations();
    let mut after_round = Vec::new();
    for round in 0..2u32 {
        for i in round * 50_000..(round + 1) * 50_000 {
            cycle(&mut peer, 2 * i + 1);
            if i % 1000 == 0 {
                peak.sample();
            }
        }
        settle(&mut peer);
        after_round.push(live() - start);
    }
    let per_cycle = (allocations() - before) as f64 / 100_000.0;
    let leaked = after_round[1] - after_round[0];
    println!(
        "open/close cycle: {per_cycle:.2} allocations, peak {} B, leaked {leaked} B",
        peak.most
    );
    assert!(per_cycle <= 16.0, "{per_cycle} allocations a cycle");
    // Equal up to allocator-level noise: a leak of one byte a cycle would be 50 kB.
    assert!(
        leaked.abs() <= 256,
        "the second 50k cycles left {leaked} bytes more than the first"
    );
    assert!(peak.most <= declared, "{} > {declared}", peak.most);
    assert_eq!(peer.conn.session_count(), 0);
}

// ---- rows 8 and 18: tiny and unread messages ------------------------------------------------

/// The receiving endpoint of rows 8 and 18, room for `sessions` plus a reader, with no
/// limit but memory in the way, and its declared memory budget; its peer accepts CREDITs as
/// fast as they come (the reader's credit is not paced).
fn tiny_message_target(sessions: u32) -> (RawPeer, i64) {
    let config = quiet(|c| {
        c.limits.max_sessions = sessions + 1;
        c.limits.max_tombstones = 0;
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
        c.limits.control_budget = u32::MAX;
        c.limits.max_recv_buffer = 8 << 20;
    });
    let declared = budget(&config);
    let settings = Settings::default().with(Setting::ControlBudget, 1_000_000);
    (
        RawPeer::with_settings(Side::Server, config, settings),
        declared,
    )
}

/// Rows 8 and 18: 100 sessions the application never reads each receive 64 one-byte and
/// empty messages, every one sent next to 64 KiB of frames for a session that is read (so a
/// zero-copy slice would pin a whole WebSocket message per held byte). What the connection
/// really holds stays within twice what it charges to its receive buffer, and within the
/// budget; once the attacker's sessions have ended, another identical attack leaves
/// what the one before it left.
#[test]
fn held_tiny_messages_hold_no_more_than_they_are_charged() {
    const SESSIONS: u32 = 100;
    let (mut peer, declared) = tiny_message_target(SESSIONS);
    let pad = vec![0u8; 16_000];
    let start = live();
    let mut after_round = Vec::new();
    // Three identical attacks: the first lets the session table reach its working size
    // (hash tables keep their capacity), the last two must leave the same.
    for attack in 0..3u32 {
        let first = attack * (SESSIONS + 1) + 1;
        let reader = peer.open_accepted(2 * first - 1, Grant::full());
        let ids: Vec<SessionId> = (first..first + SESSIONS)
            .map(|i| peer.open_accepted(2 * i + 1, Grant::full()))
            .collect();
        settle(&mut peer);
        let baseline = live();
        for round in 0..64u32 {
            for &id in &ids {
                let tiny: &[u8] = if round % 2 == 0 { b"" } else { b"x" };
                peer.send([
                    frames::data(id.0, tiny, true),
                    frames::data(reader.0, &pad, false),
                    frames::data(reader.0, &pad, false),
                    frames::data(reader.0, &pad, false),
                    frames::data(reader.0, &pad, true),
                ]);
                while peer.conn.recv(peer.now, reader).is_some() {}
                peer.collect();
                // (What the test harness itself collects is not the connection's.)
                peer.received.clear();
                peer.events.clear();
            }
            peer.advance(Duration::from_millis(10));
            peer.received.clear();
            peer.events.clear();
        }
        let held = live() - baseline;
        let charged = peer.conn.stats().recv_buffered as i64;
        println!("6,400 held tiny messages: charged {charged} B, really held {held} B");
        assert!(held <= 2 * charged, "{held} B held for {charged} B charged");
        assert!(held <= declared);
        // The attacker leaves: its sessions end.
        for &id in ids.iter().chain([&reader]) {
            peer.conn
                .reset(peer.now, id, CloseCode::CANCELLED, "")
                .unwrap();
        }
        settle(&mut peer);
        after_round.push(live() - start);
    }
    let left = after_round[2] - after_round[1];
    assert!(
        left.abs() <= 256,
        "the second attack left {left} B more than the first"
    );
}

/// What the receive arena may keep alive whatever is charged (mux-proto connection/arena.rs):
/// four 8 KiB chunks.
const ARENA_BASE: i64 = 32 * 1024;

/// Rows 8 and 18 again, with the large frames around each tiny message replaced by small
/// one-frame messages, which are copied into the receive arena's shared chunks: each tiny
/// message left unread pins a whole chunk. The arena cuts a new chunk only while all of them
/// stay within what the receive buffer is charged then (or 32 KiB), so what the connection
/// really holds stays within twice its charge plus that base.
#[test]
fn unread_tiny_messages_between_small_ones_pin_no_more_than_they_are_charged() {
    const SESSIONS: u32 = 100;
    let (mut peer, declared) = tiny_message_target(SESSIONS);
    let small = vec![0u8; 2_000];
    let reader = peer.open_accepted(1, Grant::full());
    let ids: Vec<SessionId> = (1..=SESSIONS)
        .map(|i| peer.open_accepted(2 * i + 1, Grant::full()))
        .collect();
    settle(&mut peer);
    let baseline = live();
    let mut most_charged = 0;
    for _round in 0..64u32 {
        for &id in &ids {
            peer.send([
                frames::data(id.0, b"x", true),
                frames::data(reader.0, &small, true),
                frames::data(reader.0, &small, true),
                frames::data(reader.0, &small, true),
                frames::data(reader.0, &small, true),
            ]);
            most_charged = most_charged.max(peer.conn.stats().recv_buffered as i64);
            while peer.conn.recv(peer.now, reader).is_some() {}
            peer.collect();
            peer.received.clear();
            peer.events.clear();
        }
        peer.advance(Duration::from_millis(10));
        peer.received.clear();
        peer.events.clear();
    }
    let held = live() - baseline;
    let charged = peer.conn.stats().recv_buffered as i64;
    let arena = peer.conn.recv_arena_bytes() as i64;
    println!(
        "6,400 unread tiny messages between small ones: charged {charged} B (at most \
         {most_charged} B), really held {held} B, of it the arena's chunks {arena} B"
    );
    // A chunk is cut only within what is charged then (the messages read just after
    // included), so the chunks never exceed the most the receive buffer was charged.
    assert!(arena <= most_charged.max(ARENA_BASE), "{arena} B of chunks");
    assert!(
        held <= 2 * charged + ARENA_BASE,
        "{held} B held for {charged} B charged"
    );
    assert!(held <= declared);
}

/// The application reads every message and keeps one tiny message of every five, each sent
/// between small messages it drops: all of them share the arena's chunks. Nothing is charged
/// any more once read, so the arena cuts no chunk past its base: what the held messages keep
/// alive is at most twice their own bytes plus 32 KiB, however many are held.
#[test]
fn read_and_held_tiny_messages_pin_at_most_the_arena_base() {
    const HELD: usize = 10_000;
    let config = quiet(|c| {
        c.limits.control_budget = u32::MAX;
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
    });
    let settings = Settings::default().with(Setting::ControlBudget, 1_000_000);
    let mut peer = RawPeer::with_settings(Side::Server, config, settings);
    let id = peer.open_accepted(1, Grant::full());
    settle(&mut peer);
    let small = vec![0u8; 2_000];
    let mut kept: Vec<Bytes> = Vec::with_capacity(HELD);
    let baseline = live();
    for _ in 0..HELD {
        peer.send([
            frames::data(id.0, b"x", true),
            frames::data(id.0, &small, true),
            frames::data(id.0, &small, true),
            frames::data(id.0, &small, true),
            frames::data(id.0, &small, true),
        ]);
        kept.push(peer.conn.recv(peer.now, id).expect("the tiny message"));
        while peer.conn.recv(peer.now, id).is_some() {}
        peer.collect();
        peer.received.clear();
        peer.events.clear();
    }
    let held = live() - baseline;
    let own: i64 = kept.iter().map(|m| m.len() as i64).sum();
    println!(
        "{HELD} read and held tiny messages ({own} B): really held {held} B, the arena's \
         chunks {} B",
        peer.conn.recv_arena_bytes()
    );
    assert_eq!(peer.conn.stats().recv_buffered, 0);
    assert!(peer.conn.recv_arena_bytes() as i64 <= ARENA_BASE);
    assert!(held <= 2 * own + ARENA_BASE, "{held} B held by {own} B");
    // Dropped, and the connection idle: no chunk is left.
    drop(kept);
    settle(&mut peer);
    assert_eq!(peer.conn.recv_arena_bytes(), 0);
}

// ---- rows 2, 4, 5: floods from a peer that does not read ---------------------------------

/// Rows 2, 4 and 5: 100k PINGs, then forced errors and refused OPENs, from a peer whose
/// replies are never read. One pending PONG costs nothing to hold; the queued RESETs stay
/// within the reply bound's share of the budget; the connection's memory returns to its
/// baseline once the flood is over (closed by the budget).
#[test]
fn reply_floods_hold_bounded_memory() {
    let config = quiet(|c| c.limits.control_budget = u32::MAX);
    let mut peer = RawPeer::server(config);
    peer.deliver([frames::ping(0)]);
    let baseline = live();
    for i in 0..100_000u64 {
        peer.deliver([frames::ping(i)]);
    }
    let held = live() - baseline;
    assert!(held <= 256, "{held} B held by 100k unanswered PINGs");

    let config = quiet(|c| {
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
    });
    let declared = budget(&config);
    let mut peer = RawPeer::server(config);
    let mut peak = Peak::new();
    for i in 0..100_000u32 {
        if !peer.conn.wants_read() {
            break;
        }
        let id = 2 * i + 1;
        peer.deliver([frames::open(id, "x"), frames::credit(id, u32::MAX, 0)]);
        peak.sample();
    }
    peer.collect();
    println!("reset flood: peak {} B (declared {declared} B)", peak.most);
    assert!(peak.most <= declared, "{} > {declared}", peak.most);
    assert_eq!(peer.conn_close_code(), Some(CloseCode::POLICY_VIOLATION));
}

// ---- row 12: tombstones ---------------------------------------------------------------------

/// Row 12: 100k closed sessions (1M scaled) cost at most the tombstone cap's worth of
/// memory while their tombstones live, and nothing once they expire.
#[test]
fn closed_sessions_cost_at_most_their_tombstones() {
    let config = quiet(|c| {
        c.limits.control_budget = u32::MAX;
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
    });
    let mut peer = RawPeer::server(config);
    let close = |peer: &mut RawPeer, id: u32| {
        peer.deliver([frames::open(id, "x")]);
        peer.conn
            .accept(peer.now, SessionId(id), Grant::full())
            .unwrap();
        peer.deliver([frames::reset(id, CloseCode::CANCELLED)]);
        if id % 512 == 1 {
            peer.collect();
            peer.received.clear();
            peer.events.clear();
        }
    };
    // Warm up: the tables reach their working size.
    for i in 0..1_000u32 {
        close(&mut peer, 2 * i + 1);
    }
    settle(&mut peer);
    let baseline = live();
    let mut peak = Peak::new();
    let mut after_round = Vec::new();
    for round in 0..2u32 {
        for i in 1_000 + round * 50_000..1_000 + (round + 1) * 50_000 {
            close(&mut peer, 2 * i + 1);
            if i % 1000 == 0 {
                peak.sample();
            }
        }
        assert_eq!(peer.conn.tombstone_count(), 256);
        settle(&mut peer);
        assert_eq!(peer.conn.tombstone_count(), 0);
        after_round.push(live() - baseline);
    }
    println!(
        "100k closed sessions: peak {} B above the baseline; left {after_round:?}",
        peak.most
    );
    assert!(peak.most <= 256 * 64 + 16 * 1024, "{}", peak.most);
    let grew = after_round[1] - after_round[0];
    assert!(grew.abs() <= 256, "the second 50k left {grew} B more");
}

// ---- rows 13, 14, 17: endless, oversized, refused -----------------------------------------

/// Row 13: 1,000 sessions each with a message that never ends (1 KiB fragments up to the
/// maximum) hold what their reserved windows allow and no more than the budget.
#[test]
fn endless_messages_stay_within_their_reserved_windows() {
    const SESSIONS: u32 = 1000;
    let config = quiet(|c| {
        c.limits.max_sessions = SESSIONS;
        c.limits.opens_per_sec = u32::MAX;
        c.limits.opens_burst = u32::MAX;
        c.limits.control_budget = u32::MAX;
        c.limits.max_message_size = 8 * 1024;
        c.limits.initial_credit_bytes = 16 * 1024;
        c.limits.max_recv_buffer = 24 << 20;
    });
    let declared = budget(&config);
    let mut peer = RawPeer::server(config);
    for i in 0..SESSIONS {
        peer.open_accepted(2 * i + 1, Grant::full());
    }
    settle(&mut peer);
    let baseline = live();
    let chunk = [7u8; 1024];
    for _ in 0..7 {
        let fragments: Vec<Frame> = (0..SESSIONS)
            .map(|i| frames::data(2 * i + 1, &chunk, false))
            .collect();
        peer.send(fragments);
    }
    let held = live() - baseline;
    let charged = peer.conn.stats().recv_buffered as i64;
    println!("1,000 endless messages: charged {charged} B, really held {held} B");
    assert!(held <= 2 * charged + 64 * 1024, "{held} for {charged}");
    assert!(held <= declared);
}

/// Rows 14 and 17: a DATA header announcing 4 GiB, and an OPEN past MAX_SESSIONS, allocate
/// (next to) nothing: the first is refused from its header, the second leaves a tombstone.
#[test]
fn refusals_from_the_header_allocate_nothing_for_the_payload() {
    let mut peer = RawPeer::server(quiet(|_| {}));
    peer.open_accepted(1, Grant::full());
    settle(&mut peer);
    let header = Bytes::copy_from_slice(&[0x10, 0x01, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
    let baseline = live();
    peer.conn.handle_message(peer.now, header);
    let grew = live() - baseline;
    assert!(grew <= 1024, "{grew} B for a refused 4 GiB header");
    assert_eq!(peer.conn.close_code(), Some(CloseCode::MESSAGE_TOO_BIG));

    let mut peer = RawPeer::server(quiet(|c| c.limits.max_sessions = 4));
    for i in 0..4 {
        peer.open_accepted(2 * i + 1, Grant::full());
    }
    peer.deliver([frames::open(9, "warm")]);
    settle(&mut peer);
    let baseline = live();
    let open = mux_proto::frame::encode_message([&frames::open(11, "x")]).freeze();
    peer.conn.handle_message(peer.now, open);
    let grew = live() - baseline;
    println!("a refused OPEN: {grew} B");
    assert!(grew <= 512, "{grew} B for a refused OPEN");
}

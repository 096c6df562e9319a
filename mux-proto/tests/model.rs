#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Model-based property test: random interleavings of application commands on BOTH sides
//! of a [`Pair`], checked against a model after every single operation.
//!
//! Each case draws a configuration per side (small windows, buffers, queues, session caps,
//! tombstones and timeouts, so every limit is reachable) and a sequence of operations:
//! open (either side, sometimes with large credentials), accept (random grants), reject,
//! send (0 B … 40 KiB, multi-frame), recv, grant_credit, finish, close_session, reset,
//! revoke, advance (past authorization and idle deadlines too), go_away, a few steps of the
//! transport, and full drives. Every message encodes (sender, session, seq) and a
//! deterministic body, so a misrouted, reordered, duplicated or corrupted message is caught.
//!
//! After every operation the model checks, on both sides:
//! - (a) delivery: each message read is the next one its peer sent on that session, byte
//!   for byte; a session that ends gracefully or completes has delivered everything;
//! - (b) nothing is held beyond the receive window;
//! - (c) buffered and reserved bytes stay within `max_recv_buffer` / `max_send_buffer`;
//! - (d) credit conservation: peer credit + held + unannounced == window;
//! - (e) every authorization deadline belongs to a live pending session, and
//!   `poll_timeout` is in the future and justified by something live;
//! - (f) closed sessions have no stats, and with no sessions every buffer level is zero;
//! - (g) session, pending, tombstone and control-queue counts stay within their caps;
//!
//! plus: live sessions agree with the events seen, honest peers never produce protocol,
//! flow-control or unknown-session errors, and after a full drive the control queues are
//! empty and both sides agree on each session's credit. Each case ends by settling (all
//! pending accepted, everything read: nothing may be stuck, every `Blocked` gets its
//! `Writable`) and tearing everything down (all buffers back to zero).
//!
//! The default is 256 cases (a few seconds in debug); `PROPTEST_CASES` overrides it.
//! Deeper runs, and the tools for a failure:
//!
//! ```text
//! PROPTEST_CASES=20000 cargo test -p mux-proto --release --test model
//! MODEL_STATS=1 cargo test -p mux-proto --test model -- --nocapture   # coverage per case
//! MODEL_TRACE=1 ...   # every operation and event (for replaying a shrunk case)
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use mux_proto::testing::{Endpoint, Pair};
use mux_proto::{
    CloseCode, Config, Event, Grant, Initiator, LimitKind, OpenError, OpenRequest, Permissions,
    Phase, RateLimits, RatePolicy, SendError, SessionError, SessionId, Timestamp,
};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

const CLIENT: usize = 0;
const SERVER: usize = 1;

/// Application codes the model uses, so every close can be attributed.
const CODE_CLOSE: CloseCode = CloseCode(3001);
const CODE_RESET: CloseCode = CloseCode(3002);

fn peer(x: usize) -> usize {
    1 - x
}

fn name(x: usize) -> &'static str {
    if x == CLIENT {
        "client"
    } else {
        "server"
    }
}

/// Which side opened `id`: odd IDs are the client's.
fn opener(id: u32) -> usize {
    if id % 2 == 1 {
        CLIENT
    } else {
        SERVER
    }
}

fn endpoint(pair: &Pair, x: usize) -> &Endpoint {
    if x == CLIENT {
        &pair.client
    } else {
        &pair.server
    }
}

fn endpoint_mut(pair: &mut Pair, x: usize) -> &mut Endpoint {
    if x == CLIENT {
        &mut pair.client
    } else {
        &mut pair.server
    }
}

/// `MODEL_TRACE=1` prints every operation and event (use with a replayed failing case).
fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("MODEL_TRACE").is_some())
}

// ---- generated input -----------------------------------------------------------------

#[derive(Debug, Clone)]
struct SideCfg {
    max_frame_size: u32,
    max_message_size: u32,
    max_sessions: u32,
    initial_credit_messages: u32,
    initial_credit_bytes: u32,
    max_pending_opens: u32,
    max_recv_buffer: u64,
    max_send_buffer: u64,
    max_queued_messages: u32,
    per_message_overhead: u32,
    max_tombstones: u32,
    opens_per_sec: u32,
    opens_burst: u32,
    authorization_ms: u64,
    idle_ms: Option<u64>,
    keepalive_ms: Option<u64>,
    keepalive_timeout_ms: u64,
    tombstone_ttl_ms: u64,
    shutdown_grace_ms: u64,
}

impl SideCfg {
    fn config(&self) -> Config {
        let mut c = Config::default();
        let l = &mut c.limits;
        l.max_frame_size = self.max_frame_size;
        l.max_message_size = self.max_message_size;
        l.max_sessions = self.max_sessions;
        l.initial_credit_messages = self.initial_credit_messages;
        l.initial_credit_bytes = self.initial_credit_bytes;
        l.max_pending_opens = self.max_pending_opens;
        l.max_recv_buffer = self.max_recv_buffer;
        l.max_send_buffer = self.max_send_buffer;
        l.max_queued_messages = self.max_queued_messages;
        l.per_message_overhead = self.per_message_overhead;
        l.max_tombstones = self.max_tombstones;
        l.opens_per_sec = self.opens_per_sec;
        l.opens_burst = self.opens_burst;
        // Honest peers must never trip these: the model treats a trip as a failure.
        l.control_budget = 1_000_000;
        l.max_open_metadata = 70_000;
        let t = &mut c.timeouts;
        t.authorization = Duration::from_millis(self.authorization_ms);
        t.session_idle = self.idle_ms.map(Duration::from_millis);
        // The assembly deadline has its own test (timers.rs); here it would make every
        // partial message a timer the model does not predict.
        t.message_assembly = None;
        t.keepalive_interval = self.keepalive_ms.map(Duration::from_millis);
        t.keepalive_timeout = Duration::from_millis(self.keepalive_timeout_ms);
        t.tombstone_ttl = Duration::from_millis(self.tombstone_ttl_ms);
        t.shutdown_grace = Duration::from_millis(self.shutdown_grace_ms);
        c.hash_seed = u64::from(self.max_sessions) * 0x9e37_79b9;
        c
    }
}

fn side_cfg() -> impl Strategy<Value = SideCfg> {
    let limits = (
        prop_oneof![Just(1024u32), Just(4096), Just(16_384)],
        prop_oneof![3 => Just(65_536u32), 1 => 1u32..=65_536],
        1u32..=6,
        prop_oneof![1 => 1u32..=4, 2 => 5u32..=64],
        prop_oneof![1 => Just(65_536u32), 2 => 1024u32..=65_536],
        1u32..=4,
        prop_oneof![1 => Just(16u64 << 20), 2 => 80_000u64..=1_000_000],
        prop_oneof![1 => Just(4u64 << 20), 2 => 1_000u64..=200_000],
        1u32..=16,
        prop_oneof![Just(64u32), 0u32..=128],
        0u32..=8,
        (1u32..=50, 1u32..=10),
    );
    let timeouts = (
        prop_oneof![1 => 1u64..=100, 3 => 1_000u64..=10_000],
        proptest::option::of(500u64..=300_000),
        proptest::option::of(1_000u64..=20_000),
        1_000u64..=10_000,
        1u64..=10_000,
        1u64..=30_000,
    );
    (limits, timeouts).prop_map(|(l, t)| SideCfg {
        max_frame_size: l.0,
        max_message_size: l.1,
        max_sessions: l.2,
        initial_credit_messages: l.3,
        initial_credit_bytes: l.4,
        max_pending_opens: l.5,
        max_recv_buffer: l.6,
        max_send_buffer: l.7,
        max_queued_messages: l.8,
        per_message_overhead: l.9,
        max_tombstones: l.10,
        opens_per_sec: l.11 .0,
        opens_burst: l.11 .1,
        authorization_ms: t.0,
        idle_ms: t.1,
        keepalive_ms: t.2,
        keepalive_timeout_ms: t.3,
        tombstone_ttl_ms: t.4,
        shutdown_grace_ms: t.5,
    })
}

#[derive(Debug, Clone)]
struct GrantSpec {
    permissions: u8,
    max_message: Option<u32>,
    extra: Option<(u32, u32)>,
    weight: u8,
    /// (messages per second, burst, throttle rather than close)
    rate: Option<(u32, u32, bool)>,
}

impl GrantSpec {
    fn grant(&self) -> Grant {
        let mut g = Grant::full().with_weight(self.weight);
        g.permissions = Permissions::from_bits(self.permissions).unwrap();
        g.max_message_size = self.max_message;
        g.extra_credit = self.extra;
        if let Some((rate, burst, throttle)) = self.rate {
            let limits = RateLimits {
                messages_per_sec: rate,
                burst_messages: burst,
                ..RateLimits::default()
            };
            let policy = if throttle {
                RatePolicy::Throttle
            } else {
                RatePolicy::CloseSession
            };
            g = g.with_rate(limits, policy);
        }
        g
    }

    /// Whether an honest peer can trip this grant (1008, 1009) with data it queued before
    /// the grant reached it, or with FIN on a direction that may not carry DATA.
    fn restricts(&self) -> bool {
        self.permissions != 3 || self.max_message.is_some()
    }
}

fn grant_spec() -> impl Strategy<Value = GrantSpec> {
    (
        prop_oneof![12 => Just(3u8), 1 => Just(1), 1 => Just(2), 1 => Just(0)],
        prop_oneof![5 => Just(None), 1 => (1u32..=65_536).prop_map(Some)],
        prop_oneof![
            4 => Just(None),
            2 => (0u32..=16, 0u32..=65_536).prop_map(Some),
            1 => Just(Some((u32::MAX, u32::MAX))),
        ],
        1u8..=8,
        prop_oneof![
            8 => Just(None),
            1 => (1u32..=20, 1u32..=5, prop_oneof![3 => Just(true), 1 => Just(false)])
                .prop_map(Some),
        ],
    )
        .prop_map(
            |(permissions, max_message, extra, weight, rate)| GrantSpec {
                permissions,
                max_message,
                extra,
                weight,
                rate,
            },
        )
}

#[derive(Debug, Clone)]
enum Op {
    Open {
        side: usize,
        auth: usize,
    },
    Accept {
        side: usize,
        sel: usize,
        grant: GrantSpec,
    },
    Reject {
        side: usize,
        sel: usize,
        forbidden: bool,
    },
    Send {
        side: usize,
        sel: usize,
        len: usize,
    },
    Recv {
        side: usize,
        sel: usize,
        max: usize,
    },
    GrantCredit {
        side: usize,
        sel: usize,
        messages: u32,
        bytes: u32,
    },
    Finish {
        side: usize,
        sel: usize,
    },
    CloseSession {
        side: usize,
        sel: usize,
    },
    Reset {
        side: usize,
        sel: usize,
    },
    Revoke {
        side: usize,
        sel: usize,
    },
    Advance {
        ms: u64,
    },
    GoAway {
        side: usize,
    },
    Step {
        n: usize,
    },
    Drive,
}

fn op() -> impl Strategy<Value = Op> {
    let side = 0usize..=1;
    let sel = any::<usize>();
    let len = prop_oneof![
        3 => 0usize..=16,
        4 => 17usize..=2_048,
        2 => 2_049usize..=20_000,
        1 => 20_001usize..=40_960,
    ];
    let auth = prop_oneof![12 => Just(0usize), 1 => 1usize..=65_535];
    let ms = prop_oneof![
        8 => 1u64..=50,
        4 => 51u64..=2_000,
        2 => 2_001u64..=20_000,
        1 => 20_001u64..=400_000,
    ];
    let credit = prop_oneof![
        6 => (0u32..=8, 0u32..=16_384),
        1 => Just((u32::MAX, u32::MAX)),
    ];
    prop_oneof![
        10 => (side.clone(), auth).prop_map(|(side, auth)| Op::Open { side, auth }),
        14 => (side.clone(), sel, grant_spec())
            .prop_map(|(side, sel, grant)| Op::Accept { side, sel, grant }),
        1 => (side.clone(), sel, any::<bool>())
            .prop_map(|(side, sel, forbidden)| Op::Reject { side, sel, forbidden }),
        40 => (side.clone(), sel, len).prop_map(|(side, sel, len)| Op::Send { side, sel, len }),
        28 => (side.clone(), sel, 0usize..=4)
            .prop_map(|(side, sel, max)| Op::Recv { side, sel, max }),
        4 => (side.clone(), sel, credit).prop_map(|(side, sel, (messages, bytes))| {
            Op::GrantCredit { side, sel, messages, bytes }
        }),
        2 => (side.clone(), sel).prop_map(|(side, sel)| Op::Finish { side, sel }),
        2 => (side.clone(), sel).prop_map(|(side, sel)| Op::CloseSession { side, sel }),
        2 => (side.clone(), sel).prop_map(|(side, sel)| Op::Reset { side, sel }),
        1 => (side.clone(), sel).prop_map(|(side, sel)| Op::Revoke { side, sel }),
        8 => ms.prop_map(|ms| Op::Advance { ms }),
        10 => (1usize..=3).prop_map(|n| Op::Step { n }),
        10 => Just(Op::Drive),
    ]
}

// ---- payloads ------------------------------------------------------------------------

/// The message `sender` sends as its `seq`-th on `id`: a 9-byte (sender, id, seq) header
/// followed by a deterministic body, truncated to `len`.
fn payload(sender: usize, id: u32, seq: u32, len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    v.push(sender as u8);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.truncate(len);
    let mut x =
        ((sender as u64) << 60) ^ (u64::from(id) << 28) ^ u64::from(seq) ^ 0x2545_f491_4f6c_dd1d;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    Bytes::from(v)
}

fn describe(m: &[u8]) -> String {
    if m.len() >= 9 {
        let id = u32::from_be_bytes(m[1..5].try_into().unwrap());
        let seq = u32::from_be_bytes(m[5..9].try_into().unwrap());
        format!(
            "{} bytes claiming sender {} session {id} seq {seq}",
            m.len(),
            m[0]
        )
    } else {
        format!("{} bytes {m:?}", m.len())
    }
}

// ---- the model -----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MPhase {
    Opening,
    Pending,
    Open,
}

#[derive(Debug)]
struct MSession {
    phase: MPhase,
    /// `close_session` succeeded while the session stayed live: a graceful close is
    /// pending, and this side discards what arrives.
    closing: bool,
    /// `finish` succeeded: this side sends no more.
    finished: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Graceful(CloseCode),
    Abort,
}

#[derive(Debug, Default)]
struct SideModel {
    live: BTreeMap<u32, MSession>,
    ended: BTreeSet<u32>,
    closed: bool,
    goaway_sent: bool,
    goaway_received: bool,
    owed_writable: BTreeSet<u32>,
    next_seq: BTreeMap<u32, u32>,
}

#[derive(Debug)]
struct Model {
    cfg: [SideCfg; 2],
    sides: [SideModel; 2],
    /// Messages accepted by `send` and not yet read, per (sender, session), in order.
    fifo: BTreeMap<(usize, u32), VecDeque<(u32, usize)>>,
    /// How each side ended each session, if it did so itself.
    ending: BTreeMap<(usize, u32), Ending>,
    /// Sessions whose grant an honest opener can trip (1008/1009 are then legitimate).
    restricted: BTreeSet<u32>,
    /// Sessions whose grant has a rate (4002 and rate limit hits are then legitimate).
    rated: BTreeSet<u32>,
    /// Some grant of the connection had a rate (the acceptor's throttle timers and the
    /// opener's pacing timers may be armed).
    rated_ever: [bool; 2],
    sessions_opened: usize,
    closes: BTreeMap<u16, usize>,
    outcomes: BTreeMap<String, usize>,
    messages_sent: u64,
    messages_read: u64,
}

impl Model {
    fn new(cfg: [SideCfg; 2]) -> Self {
        Model {
            cfg,
            sides: [SideModel::default(), SideModel::default()],
            fifo: BTreeMap::new(),
            ending: BTreeMap::new(),
            restricted: BTreeSet::new(),
            rated: BTreeSet::new(),
            rated_ever: [false; 2],
            sessions_opened: 0,
            closes: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            messages_sent: 0,
            messages_read: 0,
        }
    }

    /// A live session of side `x` chosen by `sel` among those `want` accepts; when there
    /// is none, now and then a dead or never-opened ID (to exercise the unknown-session path).
    fn pick(&self, x: usize, sel: usize, want: fn(&MSession) -> bool) -> Option<SessionId> {
        let ids: Vec<u32> = self.sides[x]
            .live
            .iter()
            .filter(|(_, s)| want(s))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return (sel % 16 == 0)
                .then(|| {
                    self.sides[x]
                        .ended
                        .iter()
                        .next()
                        .copied()
                        .unwrap_or(999_999)
                })
                .map(SessionId);
        }
        Some(SessionId(ids[sel % ids.len()]))
    }

    fn is_live(&self, x: usize, id: SessionId) -> bool {
        self.sides[x].live.contains_key(&id.0)
    }

    /// Takes every event side `x` produced and checks it against the model.
    fn absorb(&mut self, pair: &mut Pair, x: usize) {
        let ep = endpoint_mut(pair, x);
        while let Some(e) = ep.conn.poll_event() {
            ep.events.push_back(e);
        }
        let events: Vec<Event> = ep.events.drain(..).collect();
        for e in events {
            self.on_event(x, e);
        }
    }

    fn absorb_all(&mut self, pair: &mut Pair) {
        self.absorb(pair, CLIENT);
        self.absorb(pair, SERVER);
    }

    fn on_event(&mut self, x: usize, e: Event) {
        let who = name(x);
        if tracing() {
            eprintln!("    {who}: {e:?}");
        }
        match e {
            Event::Connected { .. } => {}
            Event::Incoming { id, .. } => {
                assert_eq!(
                    opener(id.0),
                    peer(x),
                    "{who}: Incoming for its own ID {id:?}"
                );
                assert!(
                    !self.sides[x].live.contains_key(&id.0) && !self.sides[x].ended.contains(&id.0),
                    "{who}: Incoming for a known session {id:?}"
                );
                self.sides[x].live.insert(
                    id.0,
                    MSession {
                        phase: MPhase::Pending,
                        closing: false,
                        finished: false,
                    },
                );
            }
            Event::Opened { id, .. } => {
                let s = self.sides[x]
                    .live
                    .get_mut(&id.0)
                    .unwrap_or_else(|| panic!("{who}: Opened for unknown {id:?}"));
                assert_eq!(s.phase, MPhase::Opening, "{who}: Opened for {id:?}");
                s.phase = MPhase::Open;
            }
            Event::Readable { id } | Event::Finished { id } => {
                assert!(self.is_live(x, id), "{who}: {e:?} for a dead session");
            }
            Event::Writable { id } => {
                assert!(
                    self.is_live(x, id),
                    "{who}: Writable for a dead session {id:?}"
                );
                self.sides[x].owed_writable.remove(&id.0);
            }
            Event::SessionClosed {
                id,
                code,
                initiator,
                ..
            } => self.on_session_closed(x, id, code, initiator),
            Event::GoAway { .. } => self.sides[x].goaway_received = true,
            Event::LimitHit { id, limit } => {
                let rated = id.is_some_and(|id| self.rated.contains(&id.0));
                let restricted = id.is_some_and(|id| self.restricted.contains(&id.0));
                let ok = match limit {
                    LimitKind::Sessions | LimitKind::RecvBuffer | LimitKind::OpenRate => true,
                    LimitKind::SessionRate | LimitKind::ConnectionRate => rated,
                    LimitKind::MessageSize => restricted,
                    _ => false,
                };
                assert!(ok, "{who}: an honest peer tripped {limit:?} on {id:?}");
            }
            Event::ConnectionClosed {
                code, initiator, ..
            } => {
                let goaway = self.sides.iter().any(|s| s.goaway_sent);
                assert!(
                    code == CloseCode::GOING_AWAY && goaway,
                    "{who}: connection closed with {code:?} by {initiator:?}"
                );
                let s = &mut self.sides[x];
                s.closed = true;
                let ids: Vec<u32> = s.live.keys().copied().collect();
                for id in ids {
                    self.sides[x].live.remove(&id);
                    self.sides[x].ended.insert(id);
                    self.fifo.remove(&(peer(x), id));
                }
                self.sides[x].owed_writable.clear();
            }
            other => panic!("{who}: unexpected event {other:?}"),
        }
    }

    fn on_session_closed(
        &mut self,
        x: usize,
        id: SessionId,
        code: CloseCode,
        initiator: Initiator,
    ) {
        let who = name(x);
        let s = self.sides[x]
            .live
            .remove(&id.0)
            .unwrap_or_else(|| panic!("{who}: SessionClosed for unknown {id:?} ({code:?})"));
        self.sides[x].ended.insert(id.0);
        self.sides[x].owed_writable.remove(&id.0);
        *self.closes.entry(code.0).or_default() += 1;
        let mine = opener(id.0) == x;
        let rated = self.rated.contains(&id.0);
        let allowed = match code {
            CloseCode::NORMAL => initiator == Initiator::Local,
            CODE_CLOSE
            | CODE_RESET
            | CloseCode::UNAUTHORIZED
            | CloseCode::FORBIDDEN
            | CloseCode::REVOKED => true,
            CloseCode::TIMEOUT | CloseCode::REFUSED => true,
            CloseCode::TOO_MANY_SESSIONS => mine && initiator == Initiator::Peer,
            CloseCode::RATE_LIMITED => (mine && initiator == Initiator::Peer) || rated,
            CloseCode::POLICY_VIOLATION | CloseCode::MESSAGE_TOO_BIG => {
                self.restricted.contains(&id.0)
            }
            _ => false,
        };
        assert!(
            allowed,
            "{who}: session {id:?} closed with {code:?} by {initiator:?}"
        );
        let inbound = self.fifo.remove(&(peer(x), id.0)).unwrap_or_default();
        if code == CloseCode::NORMAL {
            assert!(
                inbound.is_empty(),
                "{who}: {id:?} completed with {} messages from the peer undelivered: {inbound:?}",
                inbound.len()
            );
        }
        let graceful = self.ending.get(&(peer(x), id.0)) == Some(&Ending::Graceful(code));
        // A pending session's early data is never delivered: the application did not
        // accept it.
        if initiator == Initiator::Peer && graceful && !s.closing && s.phase == MPhase::Open {
            assert!(
                inbound.is_empty(),
                "{who}: {id:?} closed gracefully by the peer with {} messages undelivered: {inbound:?}",
                inbound.len()
            );
        }
    }

    // ---- invariants ------------------------------------------------------------------

    fn check(&self, pair: &Pair) {
        self.check_side(pair, CLIENT);
        self.check_side(pair, SERVER);
    }

    fn check_side(&self, pair: &Pair, x: usize) {
        let who = name(x);
        let conn = &endpoint(pair, x).conn;
        let now = pair.now;
        let sm = &self.sides[x];
        let cfg = &self.cfg[x];
        let lim = &conn.config().limits;
        let st = conn.stats();

        // (c) buffer caps.
        assert!(
            st.recv_buffered <= lim.max_recv_buffer,
            "{who}: recv_buffered {} > cap",
            st.recv_buffered
        );
        assert!(
            st.send_buffered <= lim.max_send_buffer,
            "{who}: send_buffered {} > cap",
            st.send_buffered
        );
        assert!(
            conn.recv_reserved() <= lim.max_recv_buffer,
            "{who}: recv_reserved {} > cap",
            conn.recv_reserved()
        );
        assert!(
            st.recv_buffered <= conn.recv_reserved(),
            "{who}: recv_buffered {} > reserved {}",
            st.recv_buffered,
            conn.recv_reserved()
        );
        assert_eq!(
            st.sessions_live as usize,
            conn.session_count(),
            "{who}: sessions_live"
        );

        // Live sessions agree with the events; (f) closed sessions have no stats.
        let ids: BTreeSet<u32> = conn.session_ids().map(|i| i.0).collect();
        let model_ids: BTreeSet<u32> = sm.live.keys().copied().collect();
        assert_eq!(
            ids, model_ids,
            "{who}: live sessions differ from the events seen"
        );
        for id in &sm.ended {
            assert!(
                conn.session_stats(SessionId(*id)).is_none(),
                "{who}: stats of closed session {id}"
            );
        }

        for (id, ms) in &sm.live {
            let sid = SessionId(*id);
            let ss = conn.session_stats(sid).unwrap();
            let phase = conn.session_phase(sid).unwrap();
            let expected = match ms.phase {
                MPhase::Opening => Phase::Opening,
                MPhase::Pending => Phase::Pending,
                MPhase::Open => Phase::Open,
            };
            assert_eq!(phase, expected, "{who}: phase of {sid:?}");
            // (b) nothing held beyond the window.
            let (wm, wb) = ss.recv_window;
            assert!(
                ss.recv_held_messages <= wm && ss.recv_queued_bytes <= u64::from(wb),
                "{who}: {sid:?} holds {} messages / {} bytes, window {wm}/{wb}",
                ss.recv_held_messages,
                ss.recv_queued_bytes
            );
            assert!(ss.recv_queued_messages <= ss.recv_held_messages);
            // (d) credit conservation.
            let m = u64::from(ss.recv_credit.0)
                + u64::from(ss.recv_held_messages)
                + u64::from(ss.recv_unannounced.0);
            let b = u64::from(ss.recv_credit.1)
                + ss.recv_queued_bytes
                + u64::from(ss.recv_unannounced.1);
            // Exact in every phase, closing included: discarded data returns its credit.
            assert_eq!(
                (m, b),
                (u64::from(wm), u64::from(wb)),
                "{who}: {sid:?} credit not conserved: {ss:?}"
            );
        }

        // (g) counts within caps.
        let local = ids.iter().filter(|id| opener(**id) == x).count();
        if let Some(peer_settings) = conn.peer_settings() {
            assert!(
                local <= peer_settings.max_sessions as usize,
                "{who}: {local} own sessions"
            );
        }
        assert!(
            ids.len() - local <= lim.max_sessions as usize,
            "{who}: {} peer sessions",
            ids.len() - local
        );
        assert!(
            conn.pending_open_count() <= lim.max_pending_opens as usize,
            "{who}: pending opens"
        );
        assert!(
            conn.tombstone_count() <= lim.max_tombstones as usize,
            "{who}: tombstones"
        );
        let control_bound = 4 * self.sessions_opened + 8;
        assert!(
            conn.queued_control_frames() <= control_bound,
            "{who}: {} control frames queued",
            conn.queued_control_frames()
        );

        // (e) deadlines.
        let deadlines: Vec<(SessionId, Timestamp)> = conn.pending_open_deadlines().collect();
        for (id, deadline) in &deadlines {
            assert_eq!(
                conn.session_phase(*id),
                Some(Phase::Pending),
                "{who}: authorization deadline for {id:?}, which is not pending"
            );
            assert!(
                *deadline > now,
                "{who}: authorization deadline of {id:?} in the past"
            );
        }
        assert!(
            deadlines.windows(2).all(|w| w[0].1 <= w[1].1),
            "{who}: deadlines out of order"
        );
        // Answer deadlines of this side's own opens: each belongs to a session still waiting.
        let answers: Vec<(SessionId, Timestamp)> = conn.open_answer_deadlines().collect();
        for (id, deadline) in &answers {
            assert_eq!(
                conn.session_phase(*id),
                Some(Phase::Opening),
                "{who}: answer deadline for {id:?}, which is not opening"
            );
            assert!(
                *deadline > now,
                "{who}: answer deadline of {id:?} in the past"
            );
        }
        let first_deadline = deadlines.iter().chain(answers.iter()).map(|d| d.1).min();
        assert_eq!(
            deadlines.len(),
            conn.pending_open_count(),
            "{who}: pending count"
        );
        for (list, len) in ["paced", "blocked", "throttled"]
            .into_iter()
            .zip(conn.wait_list_lengths())
        {
            assert!(
                len <= conn.session_count(),
                "{who}: {len} {list} entries for {} live sessions",
                conn.session_count()
            );
        }
        let timeout = conn.poll_timeout();
        if conn.is_closed() {
            assert_eq!(timeout, None, "{who}: timeout after close");
        }
        // Keepalive runs on this side's interval, or on half the peer's idle timeout (which
        // it advertises when its own keepalive is on).
        let keepalive = (cfg.keepalive_ms.is_some() || self.cfg[peer(x)].keepalive_ms.is_some())
            && conn.is_open();
        let idle = cfg.idle_ms.is_some() && conn.session_count() > 0;
        // The receive arena is looked at until its chunks are freed (once unused).
        let arena = conn.recv_arena_bytes() > 0;
        let loose = keepalive
            || idle
            || arena
            || sm.goaway_sent
            || conn.tombstone_count() > 0
            || self.rated_ever[x];
        match timeout {
            Some(t) => {
                assert!(t > now, "{who}: poll_timeout {t:?} not after now {now:?}");
                if let Some(first) = first_deadline {
                    assert!(
                        t <= first,
                        "{who}: poll_timeout {t:?} after a session deadline"
                    );
                }
                assert!(
                    loose || first_deadline.is_some(),
                    "{who}: poll_timeout {t:?} with nothing live to time"
                );
                if !loose {
                    assert_eq!(Some(t), first_deadline, "{who}: poll_timeout");
                }
            }
            None => {
                assert!(
                    first_deadline.is_none() || conn.is_closed(),
                    "{who}: pending or unanswered opens but no timeout"
                );
                assert!(
                    conn.tombstone_count() == 0 || conn.is_closed(),
                    "{who}: tombstones but no timeout"
                );
            }
        }

        // (f) nothing left over once no session is live.
        if conn.session_count() == 0 {
            assert_eq!(
                (st.recv_buffered, st.send_buffered, conn.recv_reserved()),
                (0, 0, 0),
                "{who}: buffers not released with no session live"
            );
        }
        if conn.is_closed() {
            assert_eq!(conn.session_count(), 0, "{who}: sessions after close");
        }
    }

    /// After a full drive: nothing is waiting in the control queues and both sides agree on
    /// the credit of every session live on both.
    fn check_quiescent(&self, pair: &Pair) {
        for x in [CLIENT, SERVER] {
            let conn = &endpoint(pair, x).conn;
            assert_eq!(
                conn.queued_control_frames(),
                0,
                "{}: control frames stuck after a drive",
                name(x)
            );
        }
        for (id, cs) in &self.sides[CLIENT].live {
            let Some(ss) = self.sides[SERVER].live.get(id) else {
                continue;
            };
            if cs.closing
                || ss.closing
                || cs.phase == MPhase::Opening
                || ss.phase == MPhase::Opening
            {
                continue;
            }
            let sid = SessionId(*id);
            let c = pair.client.conn.session_stats(sid).unwrap();
            let s = pair.server.conn.session_stats(sid).unwrap();
            assert_eq!(
                c.send_credit, s.recv_credit,
                "{sid:?}: client send credit vs server view"
            );
            assert_eq!(
                s.send_credit, c.recv_credit,
                "{sid:?}: server send credit vs client view"
            );
        }
    }

    // ---- operations ------------------------------------------------------------------

    fn apply(&mut self, pair: &mut Pair, op: &Op) {
        let now = pair.now;
        match *op {
            Op::Open { side: x, auth } => {
                let auth = Bytes::from(vec![0xa5u8; auth]);
                let res = endpoint_mut(pair, x)
                    .conn
                    .open(now, "m", auth, OpenRequest::default());
                *self
                    .outcomes
                    .entry(format!("open {:?}", res.as_ref().map(|_| ())))
                    .or_default() += 1;
                match res {
                    Ok(id) => {
                        assert_eq!(
                            opener(id.0),
                            x,
                            "{}: opened {id:?} of the wrong parity",
                            name(x)
                        );
                        assert!(
                            !self.sides[x].live.contains_key(&id.0)
                                && !self.sides[x].ended.contains(&id.0)
                        );
                        self.sides[x].live.insert(
                            id.0,
                            MSession {
                                phase: MPhase::Opening,
                                closing: false,
                                finished: false,
                            },
                        );
                        self.sessions_opened += 1;
                    }
                    Err(OpenError::NotOpen) => {
                        assert!(self.sides[x].closed, "{}: NotOpen", name(x))
                    }
                    Err(OpenError::GoingAway) => {
                        assert!(self.sides[x].goaway_sent || self.sides[x].goaway_received)
                    }
                    Err(OpenError::TooManySessions { max }) => {
                        let mine = self.sides[x]
                            .live
                            .keys()
                            .filter(|id| opener(**id) == x)
                            .count();
                        assert_eq!(mine, max as usize, "{}: TooManySessions", name(x));
                    }
                    Err(OpenError::RecvBufferFull) => {}
                    // Every OPEN must fit one transport message.
                    Err(OpenError::MetadataTooLarge { len, max }) => {
                        assert!(len > max && len > 65_000, "{}: {len} > {max}", name(x))
                    }
                    Err(e) => panic!("{}: open failed: {e:?}", name(x)),
                }
            }
            Op::Accept {
                side: x,
                sel,
                ref grant,
            } => {
                let Some(id) = self.pick(x, sel, |s| s.phase == MPhase::Pending) else {
                    return;
                };
                if grant.restricts() {
                    self.restricted.insert(id.0);
                }
                if grant.rate.is_some() {
                    self.rated.insert(id.0);
                    self.rated_ever = [true; 2];
                }
                match endpoint_mut(pair, x).conn.accept(now, id, grant.grant()) {
                    Ok(()) => {
                        self.sides[x].live.get_mut(&id.0).unwrap().phase = MPhase::Open;
                    }
                    Err(SessionError::UnknownSession(_)) => assert!(!self.is_live(x, id)),
                    Err(SessionError::RecvBufferFull | SessionError::CreditOverflow) => {
                        assert!(grant.extra.is_some())
                    }
                    Err(e) => panic!("{}: accept {id:?}: {e:?}", name(x)),
                }
            }
            Op::Reject {
                side: x,
                sel,
                forbidden,
            } => {
                let Some(id) = self.pick(x, sel, |s| s.phase == MPhase::Pending) else {
                    return;
                };
                let code = if forbidden {
                    CloseCode::FORBIDDEN
                } else {
                    CloseCode::UNAUTHORIZED
                };
                match endpoint_mut(pair, x).conn.reject(now, id, code, "no") {
                    Ok(()) => {
                        self.ending.insert((x, id.0), Ending::Abort);
                    }
                    Err(SessionError::UnknownSession(_)) => assert!(!self.is_live(x, id)),
                    Err(e) => panic!("{}: reject {id:?}: {e:?}", name(x)),
                }
            }
            Op::Send { side: x, sel, len } => {
                let Some(id) = self.pick(x, sel, |s| {
                    s.phase != MPhase::Pending && !s.closing && !s.finished
                }) else {
                    *self.outcomes.entry("skip".to_owned()).or_default() += 1;
                    return;
                };
                let seq = *self.sides[x].next_seq.get(&id.0).unwrap_or(&0);
                let message = payload(x, id.0, seq, len);
                let res = endpoint_mut(pair, x).conn.send(now, id, message);
                let outcome = match &res {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => format!("{e:?}")
                        .split([' ', '(', '{'])
                        .next()
                        .unwrap()
                        .to_owned(),
                };
                *self.outcomes.entry(outcome).or_default() += 1;
                match res {
                    Ok(()) => {
                        let s = &self.sides[x].live[&id.0];
                        assert_ne!(
                            s.phase,
                            MPhase::Pending,
                            "{}: send on a pending session",
                            name(x)
                        );
                        assert!(!s.closing, "{}: send after close_session", name(x));
                        self.sides[x].next_seq.insert(id.0, seq + 1);
                        self.fifo
                            .entry((x, id.0))
                            .or_default()
                            .push_back((seq, len));
                        self.messages_sent += 1;
                    }
                    Err(SendError::UnknownSession(_)) => {
                        assert!(
                            !self.is_live(x, id),
                            "{}: UnknownSession for live {id:?}",
                            name(x)
                        )
                    }
                    Err(SendError::Blocked) => {
                        self.sides[x].owed_writable.insert(id.0);
                    }
                    Err(SendError::TooLarge { len: l, max }) => {
                        assert!(
                            l > max as usize && l == len,
                            "{}: TooLarge {l} > {max}",
                            name(x)
                        )
                    }
                    Err(SendError::NotPermitted | SendError::Finished) => {}
                    Err(e) => panic!("{}: send: {e:?}", name(x)),
                }
            }
            Op::Recv { side: x, sel, max } => {
                let Some(id) = self.pick(x, sel, |s| s.phase == MPhase::Open && !s.closing) else {
                    return;
                };
                self.recv(pair, x, id, if max == 0 { usize::MAX } else { max });
            }
            Op::GrantCredit {
                side: x,
                sel,
                messages,
                bytes,
            } => {
                let Some(id) = self.pick(x, sel, |_| true) else {
                    return;
                };
                match endpoint_mut(pair, x)
                    .conn
                    .grant_credit(now, id, messages, bytes)
                {
                    Ok(()) | Err(SessionError::RecvBufferFull | SessionError::CreditOverflow) => {}
                    Err(SessionError::UnknownSession(_)) => assert!(!self.is_live(x, id)),
                    Err(e) => panic!("{}: grant_credit {id:?}: {e:?}", name(x)),
                }
            }
            Op::Finish { side: x, sel } => {
                let Some(id) = self.pick(x, sel, |s| s.phase != MPhase::Pending) else {
                    return;
                };
                match endpoint_mut(pair, x).conn.finish(now, id) {
                    Ok(()) => {
                        if let Some(s) = self.sides[x].live.get_mut(&id.0) {
                            s.finished = true;
                        }
                    }
                    Err(SessionError::UnknownSession(_)) => assert!(!self.is_live(x, id)),
                    Err(e) => panic!("{}: finish {id:?}: {e:?}", name(x)),
                }
            }
            Op::CloseSession { side: x, sel } => {
                let Some(id) = self.pick(x, sel, |_| true) else {
                    return;
                };
                let pending = self.sides[x]
                    .live
                    .get(&id.0)
                    .is_some_and(|s| s.phase == MPhase::Pending);
                match endpoint_mut(pair, x)
                    .conn
                    .close_session(now, id, CODE_CLOSE, "bye")
                {
                    Ok(()) => {
                        let ending = if pending {
                            Ending::Abort
                        } else {
                            Ending::Graceful(CODE_CLOSE)
                        };
                        self.ending.insert((x, id.0), ending);
                        if let Some(s) = self.sides[x].live.get_mut(&id.0) {
                            s.closing = true;
                        }
                        // What this side had not read is discarded.
                        self.fifo.remove(&(peer(x), id.0));
                    }
                    Err(SessionError::UnknownSession(_)) => assert!(!self.is_live(x, id)),
                    Err(e) => panic!("{}: close_session {id:?}: {e:?}", name(x)),
                }
            }
            Op::Reset { side: x, sel } | Op::Revoke { side: x, sel } => {
                let Some(id) = self.pick(x, sel, |_| true) else {
                    return;
                };
                let conn = &mut endpoint_mut(pair, x).conn;
                let res = if matches!(op, Op::Reset { .. }) {
                    conn.reset(now, id, CODE_RESET, "abort")
                } else {
                    conn.revoke(now, id, "revoked")
                };
                match res {
                    Ok(()) => {
                        self.ending.insert((x, id.0), Ending::Abort);
                    }
                    Err(SessionError::UnknownSession(_)) => assert!(!self.is_live(x, id)),
                    Err(e) => panic!("{}: reset {id:?}: {e:?}", name(x)),
                }
            }
            Op::Advance { ms } => pair.advance(Duration::from_millis(ms)),
            Op::GoAway { side: x } => {
                let conn = &mut endpoint_mut(pair, x).conn;
                if conn.is_open() {
                    self.sides[x].goaway_sent = true;
                }
                conn.go_away(now, CloseCode::GOING_AWAY, "shutting down");
            }
            Op::Step { n } => {
                for _ in 0..n {
                    pair.step();
                }
            }
            Op::Drive => pair.drive(),
        }
    }

    /// Reads up to `max` messages of `id` on side `x`, checking each against the model.
    /// Returns how many were read.
    fn recv(&mut self, pair: &mut Pair, x: usize, id: SessionId, max: usize) -> usize {
        let now = pair.now;
        let mut n = 0;
        while n < max {
            let Some(m) = endpoint_mut(pair, x).conn.recv(now, id) else {
                break;
            };
            n += 1;
            let who = name(x);
            let s = self.sides[x]
                .live
                .get(&id.0)
                .unwrap_or_else(|| panic!("{who}: message {} on dead {id:?}", describe(&m)));
            assert_eq!(
                s.phase,
                MPhase::Open,
                "{who}: message read on a {:?} session",
                s.phase
            );
            assert!(!s.closing, "{who}: message read after close_session");
            let Some((seq, len)) = self
                .fifo
                .get_mut(&(peer(x), id.0))
                .and_then(VecDeque::pop_front)
            else {
                panic!("{who}: unexpected message on {id:?}: {}", describe(&m));
            };
            let expected = payload(peer(x), id.0, seq, len);
            assert!(
                m == expected,
                "{who}: on {id:?} expected seq {seq} ({len} bytes), got {}",
                describe(&m)
            );
            self.messages_read += 1;
        }
        // Reading may complete the session.
        self.absorb(pair, x);
        n
    }

    /// Accepts everything pending and reads everything, advancing time a little when stuck
    /// (throttled credit), until nothing moves. Then nothing may be left undelivered.
    fn settle(&mut self, pair: &mut Pair) {
        for _ in 0..500 {
            for x in [CLIENT, SERVER] {
                let pending: Vec<u32> = self.sides[x]
                    .live
                    .iter()
                    .filter(|(_, s)| s.phase == MPhase::Pending)
                    .map(|(id, _)| *id)
                    .collect();
                for id in pending {
                    let now = pair.now;
                    let conn = &mut endpoint_mut(pair, x).conn;
                    match conn.accept(now, SessionId(id), Grant::full()) {
                        Ok(()) => self.sides[x].live.get_mut(&id).unwrap().phase = MPhase::Open,
                        Err(e) => panic!("settle: accept {id}: {e:?}"),
                    }
                    self.absorb(pair, x);
                }
            }
            self.check(pair);
            pair.drive();
            self.absorb_all(pair);
            self.check(pair);
            self.check_quiescent(pair);
            let mut read = 0;
            for x in [CLIENT, SERVER] {
                let ids: Vec<u32> = self.sides[x].live.keys().copied().collect();
                for id in ids {
                    read += self.recv(pair, x, SessionId(id), usize::MAX);
                }
            }
            self.check(pair);
            if read > 0 {
                continue;
            }
            if self.undelivered(pair).is_empty() {
                break;
            }
            pair.advance(Duration::from_millis(25));
            self.absorb_all(pair);
            self.check(pair);
        }
        let stuck = self.undelivered(pair);
        assert!(
            stuck.is_empty(),
            "messages or sends stuck after settling: {stuck:?}"
        );
        for x in [CLIENT, SERVER] {
            assert!(
                self.sides[x].owed_writable.is_empty(),
                "{}: Writable never came for {:?}",
                name(x),
                self.sides[x].owed_writable
            );
        }
    }

    /// Sessions live on the receiving side with messages not yet read, and live sessions
    /// with messages still queued for sending.
    fn undelivered(&self, pair: &Pair) -> Vec<String> {
        let mut out = Vec::new();
        for ((sender, id), q) in &self.fifo {
            if !q.is_empty() && self.sides[peer(*sender)].live.contains_key(id) {
                out.push(format!(
                    "{} messages from {} on {id}",
                    q.len(),
                    name(*sender)
                ));
            }
        }
        for x in [CLIENT, SERVER] {
            for id in self.sides[x].live.keys() {
                let ss = endpoint(pair, x)
                    .conn
                    .session_stats(SessionId(*id))
                    .unwrap();
                if ss.send_queued_messages > 0 {
                    out.push(format!(
                        "{}: {} queued on {id}: {ss:?}",
                        name(x),
                        ss.send_queued_messages
                    ));
                }
            }
        }
        out
    }

    /// Resets every live session on both sides; afterwards every buffer level is zero.
    fn teardown(&mut self, pair: &mut Pair) {
        for x in [CLIENT, SERVER] {
            let ids: Vec<u32> = self.sides[x].live.keys().copied().collect();
            for id in ids {
                if self.is_live(x, SessionId(id)) {
                    let now = pair.now;
                    endpoint_mut(pair, x)
                        .conn
                        .reset(now, SessionId(id), CODE_RESET, "teardown")
                        .unwrap();
                    self.ending.insert((x, id), Ending::Abort);
                    self.absorb(pair, x);
                }
            }
        }
        pair.drive();
        self.absorb_all(pair);
        self.check(pair);
        for x in [CLIENT, SERVER] {
            let conn = &endpoint(pair, x).conn;
            assert_eq!(
                conn.session_count(),
                0,
                "{}: sessions left after teardown",
                name(x)
            );
        }
    }
}

fn run(cfg: [SideCfg; 2], mut ops: Vec<Op>, goaway: Option<(usize, usize)>) {
    // GOAWAY ends the connection once sessions drain, so it comes at most once per case.
    if let Some((at, side)) = goaway {
        ops.insert(at % (ops.len() + 1), Op::GoAway { side });
    }
    let mut pair = Pair::connected_with(cfg[CLIENT].config(), cfg[SERVER].config());
    let mut model = Model::new(cfg);
    model.absorb_all(&mut pair);
    model.check(&pair);
    for op in &ops {
        if tracing() {
            eprintln!("@{:?} {op:?}", pair.now);
        }
        model.apply(&mut pair, op);
        model.absorb_all(&mut pair);
        model.check(&pair);
        if matches!(op, Op::Drive) {
            model.check_quiescent(&pair);
        }
    }
    model.settle(&mut pair);
    model.teardown(&mut pair);
    if std::env::var_os("MODEL_STATS").is_some() {
        let ended = model.sides[CLIENT].ended.len() + model.sides[SERVER].ended.len();
        eprintln!(
            "ops {:3} sessions {:3} ended {:3} sent {:4} read {:4} closed {} stalls {} {} codes {:?}",
            ops.len(),
            model.sessions_opened,
            ended,
            model.messages_sent,
            model.messages_read,
            model.sides[CLIENT].closed || model.sides[SERVER].closed,
            pair.client.conn.stats().credit_stalls,
            pair.server.conn.stats().credit_stalls,
            model.closes,
        );
        eprintln!("    sends {:?}", model.outcomes);
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn model(
        client in side_cfg(),
        server in side_cfg(),
        ops in proptest::collection::vec(op(), 1..=200),
        goaway in proptest::option::weighted(0.15, (any::<usize>(), 0usize..=1)),
    ) {
        run([client, server], ops, goaway);
    }
}

// ---- regressions the model found, as plain scenarios ------------------------------------

/// Connected pair with keepalive and idle timers off, so `poll_timeout` shows only what the
/// scenario creates.
fn quiet_pair(client: Config, server: Config) -> Pair {
    let quiet = |mut c: Config| {
        c.timeouts.keepalive_interval = None;
        c.timeouts.session_idle = None;
        c.timeouts.message_assembly = None;
        c
    };
    Pair::connected_with(quiet(client), quiet(server))
}

/// An accepted (or rejected) open must not leave its authorization deadline behind: it woke
/// the driver for nothing and counted against `pending_open_count` in `poll_timeout`.
#[test]
fn decided_open_leaves_no_authorization_deadline() {
    let mut c = Config::default();
    c.limits.max_tombstones = 0;
    let mut pair = quiet_pair(c.clone(), c);
    let id = pair.open_accepted("x", Grant::full());
    assert_eq!(pair.server.conn.pending_open_deadlines().count(), 0);
    assert_eq!(pair.server.conn.poll_timeout(), None, "{id:?}");
}

/// The application read every complete message while credit was still ample, then a message
/// larger than the remaining credit arrived in part: the receiver held the fragment and no
/// `recv` followed to announce the credit the reads had freed, so both sides waited forever.
#[test]
fn fragment_after_everything_read_gets_the_credit_it_needs() {
    let mut pair = Pair::connected();
    let id = pair.open_accepted("x", Grant::full());
    let now = pair.now;
    for _ in 0..10 {
        pair.client
            .conn
            .send(now, id, Bytes::from(vec![1u8; 1000]))
            .unwrap();
    }
    pair.drive();
    assert_eq!(pair.server.recv_all(now, id).len(), 10);
    pair.drive();
    let big = payload(CLIENT, id.0, 0, 64_000);
    pair.client.conn.send(now, id, big.clone()).unwrap();
    pair.drive();
    assert_eq!(pair.server.recv_all(now, id), vec![big]);
}

/// Both sides close gracefully while each has messages queued beyond the other's credit.
/// Each discarded the other's DATA without returning its credit, so neither queue could
/// drain and neither CLOSE was ever sent.
#[test]
fn mutual_graceful_close_with_stalled_queues_completes() {
    let mut c = Config::default();
    c.limits.initial_credit_messages = 2;
    let mut pair = quiet_pair(c.clone(), c);
    let id = pair.open_accepted("x", Grant::full());
    let now = pair.now;
    for _ in 0..5 {
        pair.client
            .conn
            .send(now, id, Bytes::from_static(b"c"))
            .unwrap();
        pair.server
            .conn
            .send(now, id, Bytes::from_static(b"s"))
            .unwrap();
    }
    pair.drive();
    pair.client
        .conn
        .close_session(now, id, CODE_CLOSE, "bye")
        .unwrap();
    pair.server
        .conn
        .close_session(now, id, CODE_CLOSE, "bye")
        .unwrap();
    pair.drive();
    assert_eq!(pair.client.conn.session_count(), 0);
    assert_eq!(pair.server.conn.session_count(), 0);
    for conn in [&pair.client.conn, &pair.server.conn] {
        let st = conn.stats();
        assert_eq!(
            (st.recv_buffered, st.send_buffered, conn.recv_reserved()),
            (0, 0, 0)
        );
    }
}

/// Two OPENs with large credentials do not fit one transport message: the second waited for
/// the next one, but the early DATA of its session was written after the first and reached
/// the peer before its OPEN (connection error 4005).
#[test]
fn data_never_overtakes_its_open() {
    let mut c = Config::default();
    c.limits.max_open_metadata = 70_000;
    let mut pair = Pair::connected_with(c.clone(), c);
    let now = pair.now;
    let auth = |n| Bytes::from(vec![7u8; n]);
    let conn = &mut pair.client.conn;
    conn.open(now, "a", auth(1_747), OpenRequest::default())
        .unwrap();
    let id = conn
        .open(now, "b", auth(63_738), OpenRequest::default())
        .unwrap();
    conn.send(now, id, Bytes::new()).unwrap();
    pair.drive();
    assert!(
        pair.server.conn.is_open(),
        "{:?}",
        pair.server.conn.close_code()
    );
    assert_eq!(pair.server.take_incoming().len(), 2);
}

/// GOAWAY with nothing live closes at once; the CLOSE and RESET still queued went out but the
/// OPENs they answer were dropped, so the peer saw frames for sessions never opened (4005).
#[test]
fn shutdown_keeps_the_opens_its_closes_answer() {
    let mut pair = Pair::connected();
    let now = pair.now;
    let conn = &mut pair.client.conn;
    let a = conn
        .open(now, "a", Bytes::new(), OpenRequest::default())
        .unwrap();
    let b = conn
        .open(now, "b", Bytes::new(), OpenRequest::default())
        .unwrap();
    conn.close_session(now, a, CODE_CLOSE, "bye").unwrap();
    conn.reset(now, b, CODE_RESET, "abort").unwrap();
    conn.go_away(now, CloseCode::GOING_AWAY, "done");
    pair.drive();
    assert_eq!(pair.server.conn.close_code(), Some(CloseCode::GOING_AWAY));
}

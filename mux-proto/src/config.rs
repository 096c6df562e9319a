//! Configuration: the limits a [`Connection`](crate::Connection) enforces and its timeouts.
//!
//! Every value has a documented default chosen for a browser-facing server: small enough that
//! one connection cannot hold much memory, large enough that honest traffic never trips it.

use std::time::Duration;

use crate::frame::{Permissions, RateLimits, Setting, Settings};

/// What to do when a peer sends faster than a session's or the connection's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RatePolicy {
    /// Accept what arrived within credit, but withhold further credit until the bucket refills,
    /// so the sender slows down without losing the session.
    #[default]
    Throttle,
    /// Reset the session with 4002 RATE_LIMITED and a retry hint.
    CloseSession,
    /// Close the whole connection with 1008 POLICY_VIOLATION.
    CloseConnection,
}

/// Limits this endpoint enforces on its peer. The ones marked *advertised* are sent in
/// SETTINGS so an honest peer never trips them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Largest DATA payload per frame (advertised). Default 64 KiB: a default-size message
    /// travels in one frame, with no reassembly copy and a quarter of the per-frame work of
    /// 16 KiB (BENCHMARKS.md, bulk), while the scheduler still interleaves sessions frame by
    /// frame, so a competing session waits behind at most one 64 KiB frame.
    pub max_frame_size: u32,
    /// Largest message on a session unless its grant says less (advertised). Default 64 KiB.
    /// A session's effective maximum is never above its byte window.
    pub max_message_size: u32,
    /// Peer-opened sessions open at once (advertised). Default 100.
    pub max_sessions: u32,
    /// Messages of credit each session starts with (advertised). Default 64.
    pub initial_credit_messages: u32,
    /// Bytes of credit each session starts with (advertised). Default 64 KiB.
    pub initial_credit_bytes: u32,
    /// Control frames per second (and burst), counting OPEN, CREDIT, CLOSE, RESET, PING,
    /// PONG, GOAWAY received and the session errors this endpoint generates (advertised).
    /// Exhausting it closes the connection with 1008. Default 1,000/s.
    pub control_budget: u32,
    /// Largest `kind` plus `auth` in one OPEN (advertised). Default 4 KiB.
    pub max_open_metadata: u32,
    /// Peer OPENs accepted per second; more are refused with 4002. Default 100/s.
    pub opens_per_sec: u32,
    /// Burst for `opens_per_sec`. Default 100.
    pub opens_burst: u32,
    /// Peer-opened sessions waiting for the application's authorization decision at once;
    /// more are refused with 4003. Default 16.
    pub max_pending_opens: u32,
    /// Rates enforced on every peer session unless its grant overrides them. Default none.
    pub session_rate: RateLimits,
    /// Rates enforced on all DATA of the connection together. Default none.
    pub connection_rate: RateLimits,
    /// What exceeding a rate does. Default [`RatePolicy::Throttle`].
    pub rate_policy: RatePolicy,
    /// Hard cap on bytes this endpoint buffers for received data, with
    /// [`Limits::per_message_overhead`] charged per message. The sum of all sessions'
    /// receive windows is kept within it, so a peer within its credit never reaches it.
    /// Default 16 MiB.
    pub max_recv_buffer: u64,
    /// Hard cap on bytes queued for sending, per-message overhead included; beyond it `send`
    /// returns [`SendError::Blocked`](crate::SendError::Blocked). Default 4 MiB.
    pub max_send_buffer: u64,
    /// Messages one session may queue for sending. Default 64.
    pub max_queued_messages: u32,
    /// Bookkeeping bytes charged per buffered message on top of its payload, so floods of
    /// tiny messages are bounded in memory too. Default 64.
    pub per_message_overhead: u32,
    /// Closed sessions remembered so their late frames are absorbed for free. Default 256.
    pub max_tombstones: u32,
    /// How many times its initial size a session's receive window may grow to, in both units,
    /// while the application reads everything as fast as the peer sends (window autotuning,
    /// spec/sessions.md#window-growth). A window that stalls a sender whose reader is idle is
    /// doubled, within [`Limits::max_recv_buffer`], while no other session is receiving; a
    /// reader that falls behind never grows it.
    /// Default 4 (64 KiB grows to at most 256 KiB, yamux's default window): measured on
    /// one-session bulk, 2x and 4x gain 1.3x and 1.8x over no growth, while 16x loses it
    /// again to allocator churn of the larger amount held in flight (BENCHMARKS.md, P11).
    /// 1 turns growth off.
    pub max_window_growth: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 64 * 1024,
            max_message_size: 64 * 1024,
            max_sessions: 100,
            initial_credit_messages: 64,
            initial_credit_bytes: 64 * 1024,
            control_budget: 1000,
            max_open_metadata: 4096,
            opens_per_sec: 100,
            opens_burst: 100,
            max_pending_opens: 16,
            session_rate: RateLimits::default(),
            connection_rate: RateLimits::default(),
            rate_policy: RatePolicy::Throttle,
            max_recv_buffer: 16 * 1024 * 1024,
            max_send_buffer: 4 * 1024 * 1024,
            max_queued_messages: 64,
            per_message_overhead: 64,
            max_tombstones: 256,
            max_window_growth: 4,
        }
    }
}

/// Deadlines. `None` disables a timer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Timeouts {
    /// Send a PING after this long without receiving anything; capped at half the peer's
    /// IDLE_TIMEOUT_MS setting when it has one. Default 15 s.
    pub keepalive_interval: Option<Duration>,
    /// Close with 4006 if nothing arrives this long after a PING. Default 10 s.
    pub keepalive_timeout: Duration,
    /// Close with 4006 if the peer's SETTINGS has not arrived. Default 10 s.
    pub settings_timeout: Duration,
    /// Refuse a peer OPEN with 4006 if the application has not decided by then. Default 5 s.
    pub authorization: Duration,
    /// Give up (RESET 4006) on a session this side opened that the peer has not answered
    /// by then. Default 10 s: twice the peer's recommended authorization deadline.
    pub open_timeout: Duration,
    /// Reset a session with 4006 after this long without DATA either way. Default 5 min.
    pub session_idle: Option<Duration>,
    /// Reset a session with 4006 when a message the peer sent in several frames is not
    /// complete this long after its first frame, however its fragments trickle in (each
    /// would otherwise restart the idle timer). Default 30 s: a whole 64 KiB message at
    /// about 2 KB/s.
    pub message_assembly: Option<Duration>,
    /// After GOAWAY, close with 1001 when sessions have not finished by then. Default 30 s.
    pub shutdown_grace: Duration,
    /// How long a closed session's tombstone absorbs late frames. Default 10 s.
    pub tombstone_ttl: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_timeout: Duration::from_secs(10),
            settings_timeout: Duration::from_secs(10),
            authorization: Duration::from_secs(5),
            open_timeout: Duration::from_secs(10),
            session_idle: Some(Duration::from_secs(300)),
            message_assembly: Some(Duration::from_secs(30)),
            shutdown_grace: Duration::from_secs(30),
            tombstone_ttl: Duration::from_secs(10),
        }
    }
}

/// Everything a [`Connection`](crate::Connection) needs besides its side.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Config {
    /// Limits enforced on the peer.
    pub limits: Limits,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// Seed for the session table's hasher. Drivers SHOULD pass a random value so a peer
    /// cannot choose IDs that collide.
    pub hash_seed: u64,
}

impl Config {
    /// The SETTINGS frame that advertises these limits.
    pub fn settings(&self) -> Settings {
        let l = &self.limits;
        let idle_ms = match self.timeouts.keepalive_interval {
            Some(interval) => {
                let total = interval.saturating_add(self.timeouts.keepalive_timeout);
                u32::try_from(total.as_millis()).unwrap_or(u32::MAX)
            }
            None => 0,
        };
        Settings::default()
            .with(Setting::MaxFrameSize, l.max_frame_size)
            .with(Setting::MaxSessions, l.max_sessions)
            .with(Setting::InitialCreditMessages, l.initial_credit_messages)
            .with(Setting::InitialCreditBytes, l.initial_credit_bytes)
            .with(Setting::MaxMessageSize, l.max_message_size)
            .with(Setting::ControlBudget, l.control_budget)
            .with(Setting::MaxOpenMetadata, l.max_open_metadata)
            .with(Setting::IdleTimeoutMs, idle_ms)
    }
}

/// The peer's limits, resolved from its SETTINGS with the spec's defaults for absent values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSettings {
    /// Largest DATA payload the peer accepts per frame.
    pub max_frame_size: u32,
    /// Sessions this endpoint may have open at once that it opened itself.
    pub max_sessions: u32,
    /// Messages of credit each session starts with for this endpoint's sending.
    pub initial_credit_messages: u32,
    /// Bytes of credit each session starts with for this endpoint's sending.
    pub initial_credit_bytes: u32,
    /// Largest message the peer accepts.
    pub max_message_size: u32,
    /// Control frames per second the peer accepts.
    pub control_budget: u32,
    /// Largest OPEN metadata the peer accepts.
    pub max_open_metadata: u32,
    /// The peer's idle timeout in milliseconds (0: none).
    pub idle_timeout_ms: u32,
}

impl PeerSettings {
    /// The defaults of spec/frames.md#settings.
    pub const DEFAULT: PeerSettings = PeerSettings {
        max_frame_size: 16_384,
        max_sessions: 100,
        initial_credit_messages: 64,
        initial_credit_bytes: 65_536,
        max_message_size: 65_536,
        control_budget: 200,
        max_open_metadata: 4096,
        idle_timeout_ms: 0,
    };

    /// Largest message this side may send on a session whose window is the peer's initial
    /// credit: a message must fit in the receiver's window, since credit returns only as
    /// whole messages are read (spec/sessions.md#credit).
    pub fn max_message_for_initial_window(&self) -> u32 {
        self.max_message_size.min(self.initial_credit_bytes).max(1)
    }

    /// Resolves received SETTINGS against the defaults.
    pub fn from_settings(s: &Settings) -> PeerSettings {
        let d = PeerSettings::DEFAULT;
        PeerSettings {
            max_frame_size: s.get(Setting::MaxFrameSize).unwrap_or(d.max_frame_size),
            max_sessions: s.get(Setting::MaxSessions).unwrap_or(d.max_sessions),
            initial_credit_messages: s
                .get(Setting::InitialCreditMessages)
                .unwrap_or(d.initial_credit_messages),
            initial_credit_bytes: s
                .get(Setting::InitialCreditBytes)
                .unwrap_or(d.initial_credit_bytes),
            max_message_size: s.get(Setting::MaxMessageSize).unwrap_or(d.max_message_size),
            control_budget: s.get(Setting::ControlBudget).unwrap_or(d.control_budget),
            max_open_metadata: s
                .get(Setting::MaxOpenMetadata)
                .unwrap_or(d.max_open_metadata),
            idle_timeout_ms: s.get(Setting::IdleTimeoutMs).unwrap_or(d.idle_timeout_ms),
        }
    }
}

/// The application's authorization decision for a session the peer opened.
///
/// Permissions and limits here apply to this session only; they are sent to the peer in
/// ACCEPT and enforced on every DATA frame it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Grant {
    /// Which directions may carry DATA. Default both.
    pub permissions: Permissions,
    /// Largest message the peer may send; `None` keeps the connection's limit.
    pub max_message_size: Option<u32>,
    /// Rates enforced on the peer's DATA; `None` keeps [`Limits::session_rate`]. They travel
    /// in the ACCEPT, and an opener built on this crate paces its DATA within them, so only
    /// a peer that ignores its grant meets the policy.
    pub rate: Option<RateLimits>,
    /// What exceeding the rate does; `None` keeps [`Limits::rate_policy`].
    pub rate_policy: Option<RatePolicy>,
    /// Extra receive window on top of the initial credit, as (messages, bytes); granted at
    /// once with a CREDIT frame. Refused if the connection's receive buffer cannot cover it.
    pub extra_credit: Option<(u32, u32)>,
    /// Share of the outbound bandwidth relative to other sessions (deficit round robin
    /// weight, 1..=255). Default 1.
    pub weight: u8,
}

impl Default for Grant {
    fn default() -> Self {
        Grant {
            permissions: Permissions::BOTH,
            max_message_size: None,
            rate: None,
            rate_policy: None,
            extra_credit: None,
            weight: 1,
        }
    }
}

impl Grant {
    /// Both directions, connection defaults.
    pub fn full() -> Self {
        Grant::default()
    }

    /// The peer may only receive: DATA from it closes the session with 1008.
    pub fn receive_only() -> Self {
        Grant {
            permissions: Permissions::RECEIVE,
            ..Grant::default()
        }
    }

    /// The peer may only send.
    pub fn send_only() -> Self {
        Grant {
            permissions: Permissions::SEND,
            ..Grant::default()
        }
    }

    /// Builder: the largest message the peer may send.
    pub fn with_max_message_size(mut self, max: u32) -> Self {
        self.max_message_size = Some(max);
        self
    }

    /// Builder: rate limits on the peer's DATA and the policy when exceeded.
    pub fn with_rate(mut self, rate: RateLimits, policy: RatePolicy) -> Self {
        self.rate = Some(rate);
        self.rate_policy = Some(policy);
        self
    }

    /// Builder: extra receive window (messages, bytes).
    pub fn with_extra_credit(mut self, messages: u32, bytes: u32) -> Self {
        self.extra_credit = Some((messages, bytes));
        self
    }

    /// Builder: scheduling weight (0 is treated as 1).
    pub fn with_weight(mut self, weight: u8) -> Self {
        self.weight = weight.max(1);
        self
    }
}

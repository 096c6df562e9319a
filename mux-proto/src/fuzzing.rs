//! Fuzz bodies: one `pub fn name(data: &[u8])` per target, so the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` are one-liners and the corpus replay (`tests/fuzz_corpus.rs`) runs
//! exactly the same code on the stable toolchain. Enabled by the `fuzzing` feature.
//!
//! Every body panics when an invariant breaks; libFuzzer records the input as a crash.
//! The invariants are listed in FUZZING.md.
//!
//! This is a harness like [`crate::testing`]: it asserts and indexes freely.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use arbitrary::{Arbitrary, Result as ArbResult, Unstructured};
use bytes::{Bytes, BytesMut};

use crate::frame::{
    decode_message, encode_message, split_frame, Accept, ConnClose, Credential, Credit, Data,
    Frame, FrameError, Frames, GoAway, Header, Open, OpenRequest, Permissions, RateLimits,
    SessionClose, Setting, Settings, Text, MAX_KIND_LEN, MAX_REASON_LEN,
};
use crate::testing::Pair;
use crate::{CloseCode, Config, Event, Grant, RatePolicy, SessionId, Timestamp};

// ---- decode_bytes ----------------------------------------------------------------------

/// Arbitrary bytes as one WebSocket message through [`Frames`] and [`Header::parse`].
///
/// No panic; `Header::parse` (the table) gives the same answer as the rule-by-rule header
/// checks; `Header::parse` agrees with the first item `Frames` yields; errors call for
/// 1002 (1007 exactly for invalid UTF-8); the decoder stops after its first error; every
/// frame that decoded re-encodes to its exact input bytes (SETTINGS: to at most as many,
/// since unknown or reordered ids are dropped), and decode → encode → decode is stable.
pub fn decode_bytes(data: &[u8]) {
    let message = Bytes::copy_from_slice(data);
    let header = Header::parse(data);
    assert_eq!(
        header,
        Header::parse_checked(data),
        "the header table and the rules disagree"
    );

    let mut iter = Frames::new(message.clone());
    let mut frames = Vec::new();
    let mut error = None;
    for item in &mut iter {
        assert!(error.is_none(), "Frames yielded an item after an error");
        match item {
            Ok(frame) => frames.push(frame),
            Err(e) => error = Some(e),
        }
    }
    assert!(iter.next().is_none(), "Frames is not fused");

    match &header {
        Err(e) if data.is_empty() => {
            assert!(matches!(e, FrameError::TruncatedHeader { available: 0 }));
            assert_eq!(error, Some(FrameError::EmptyMessage));
        }
        Err(e) => {
            assert!(frames.is_empty(), "frames decoded behind a bad header");
            assert_eq!(error.as_ref(), Some(e), "Frames and Header::parse disagree");
        }
        Ok(h) => match frames.first() {
            Some(first) => {
                assert_eq!(first.frame_type(), h.frame_type);
                assert_eq!(first.session_id(), h.session_id);
            }
            None => {
                let e = error
                    .as_ref()
                    .expect("a non-empty message yields something");
                assert_eq!(e.frame_type(), Some(h.frame_type), "{e:?} after {h:?}");
            }
        },
    }

    if let Some(e) = &error {
        let code = e.close_code();
        assert!(
            code == CloseCode::PROTOCOL_ERROR || code == CloseCode::INVALID_DATA,
            "{e:?} calls for {code:?}"
        );
        assert_eq!(code == CloseCode::INVALID_DATA, e.kind() == "InvalidUtf8");
        assert!(!e.to_string().is_empty());
        let _ = e.field();
    }

    // Each decoded frame against its own bytes in the input.
    let mut rest = message;
    for frame in &frames {
        let before = rest.clone();
        let (h, payload) = split_frame(&mut rest).expect("a decoded frame splits");
        assert_eq!(Header::parse(&before).as_ref(), Ok(&h));
        assert_eq!(payload.len(), h.len as usize);
        let raw = before.slice(..before.len() - rest.len());
        let mut one = BytesMut::new();
        frame.encode(&mut one);
        assert_eq!(one.len(), frame.encoded_len());
        if matches!(frame, Frame::Settings(_)) {
            assert!(one.len() <= raw.len(), "SETTINGS re-encoded longer");
        } else {
            assert_eq!(&one[..], &raw[..], "{frame:?} is not canonical");
        }
    }

    // decode → encode → decode.
    let wire = encode_message(frames.iter()).freeze();
    if frames.is_empty() {
        assert!(wire.is_empty());
        return;
    }
    let again = decode_message(wire.clone()).expect("re-encoded frames decode");
    assert_eq!(again, frames, "decode → encode → decode changed the frames");
    assert_eq!(encode_message(again.iter()).freeze(), wire);
}

// ---- valid frames from fuzzer bytes ------------------------------------------------------

/// How session IDs are drawn for generated frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ids {
    /// Any non-zero ID, small ones more often.
    Any,
    /// Mostly IDs a short connection actually uses (1..=12), so injected frames hit live
    /// sessions and tombstones.
    Small,
}

fn session_id(u: &mut Unstructured<'_>, ids: Ids) -> ArbResult<SessionId> {
    let id = match ids {
        Ids::Small if !u.ratio(1, 16)? => u.int_in_range(1..=12)?,
        _ if u.ratio(1, 2)? => u.int_in_range(1..=16)?,
        _ => u.int_in_range(1..=u32::MAX)?,
    };
    Ok(SessionId(id))
}

const NAMED_CODES: [CloseCode; 20] = [
    CloseCode::NORMAL,
    CloseCode::GOING_AWAY,
    CloseCode::PROTOCOL_ERROR,
    CloseCode::UNSUPPORTED_DATA,
    CloseCode::INVALID_DATA,
    CloseCode::POLICY_VIOLATION,
    CloseCode::MESSAGE_TOO_BIG,
    CloseCode::INTERNAL_ERROR,
    CloseCode::TRY_AGAIN_LATER,
    CloseCode::UNAUTHORIZED,
    CloseCode::FORBIDDEN,
    CloseCode::RATE_LIMITED,
    CloseCode::TOO_MANY_SESSIONS,
    CloseCode::FLOW_CONTROL,
    CloseCode::UNKNOWN_SESSION,
    CloseCode::TIMEOUT,
    CloseCode::REVOKED,
    CloseCode::SLOW_CONSUMER,
    CloseCode::REFUSED,
    CloseCode::CANCELLED,
];

/// A code valid on the wire (spec/close-codes.md#valid-values).
fn wire_code(u: &mut Unstructured<'_>) -> ArbResult<CloseCode> {
    if u.ratio(3, 4)? {
        return Ok(*u.choose(&NAMED_CODES)?);
    }
    const RANGES: [(u16, u16); 4] = [(1000, 1003), (1007, 1011), (1013, 1013), (3000, 4999)];
    let &(lo, hi) = u.choose(&RANGES)?;
    Ok(CloseCode(u.int_in_range(lo..=hi)?))
}

/// UTF-8 text of at most `max` bytes; sometimes exactly `max`.
fn text(u: &mut Unstructured<'_>, max: usize) -> ArbResult<Text> {
    if u.ratio(1, 16)? {
        let fill = *u.choose(&["k", "é", "€", "😀"])?;
        return Ok(Text::truncated(&fill.repeat(max), max));
    }
    let s = <&str>::arbitrary(u)?;
    Ok(Text::truncated(s, max))
}

/// Bytes from the input (at most `cap` of them), padded with a pattern to at least `min`,
/// or to `min` plus a fuzzer-chosen amount, so long payloads cost few input bytes.
fn payload(u: &mut Unstructured<'_>, min: usize, cap: usize) -> ArbResult<Bytes> {
    let head = <&[u8]>::arbitrary(u)?;
    let mut v = head[..head.len().min(256).min(cap)].to_vec();
    let target = if min > 0 || u.ratio(1, 8)? {
        (min + usize::from(u.arbitrary::<u16>()? % 4096)).min(cap.max(min))
    } else {
        0
    };
    while v.len() < target {
        v.push((v.len() as u8).wrapping_mul(31) ^ 0x5a);
    }
    Ok(Bytes::from(v))
}

fn frame(u: &mut Unstructured<'_>, ids: Ids) -> ArbResult<Frame> {
    Ok(match u.int_in_range(0..=10u8)? {
        0 => {
            // spec/frames.md#data: END; END|FIN; a fragment of ≥ 1,024 bytes; a bare FIN.
            let (end, fin) =
                *u.choose(&[(true, false), (true, true), (false, false), (false, true)])?;
            let payload = match (end, fin) {
                (false, true) => Bytes::new(),
                (false, false) => payload(u, 1024, 64 * 1024)?,
                _ => payload(u, 0, 64 * 1024)?,
            };
            Frame::Data(Data {
                session_id: session_id(u, ids)?,
                end,
                fin,
                payload,
            })
        }
        1 => Frame::Open(Open {
            session_id: session_id(u, ids)?,
            request: OpenRequest {
                max_message_size: u.arbitrary()?,
                messages_per_sec: u.arbitrary()?,
                bytes_per_sec: u.arbitrary()?,
            },
            kind: text(u, MAX_KIND_LEN)?,
            auth: Credential::new(if u.ratio(1, 64)? {
                Bytes::from(vec![0xa5; usize::from(u16::MAX)])
            } else {
                payload(u, 0, usize::from(u16::MAX))?
            }),
        }),
        2 => Frame::Accept(Accept {
            session_id: session_id(u, ids)?,
            permissions: Permissions::from_bits(u.int_in_range(0..=3)?)
                .unwrap_or(Permissions::BOTH),
            max_message_size: u.int_in_range(1..=u32::MAX)?,
            rate: RateLimits {
                messages_per_sec: u.arbitrary()?,
                bytes_per_sec: u.arbitrary()?,
                burst_messages: u.arbitrary()?,
                burst_bytes: u.arbitrary()?,
            },
        }),
        3 => {
            let (mut messages, mut bytes): (u32, u32) = (u.arbitrary()?, u.arbitrary()?);
            // spec/frames.md#credit: a grant of nothing is an error.
            if messages == 0 && bytes == 0 {
                if u.arbitrary()? {
                    messages = 1;
                } else {
                    bytes = 1;
                }
            }
            Frame::Credit(Credit {
                session_id: session_id(u, ids)?,
                messages,
                bytes,
            })
        }
        4 | 5 => {
            let close = SessionClose {
                session_id: session_id(u, ids)?,
                code: wire_code(u)?,
                retry_after_ms: u.arbitrary()?,
                reason: text(u, MAX_REASON_LEN)?,
            };
            if u.arbitrary()? {
                Frame::Close(close)
            } else {
                Frame::Reset(close)
            }
        }
        6 => {
            let mut settings = Settings::default();
            for setting in Setting::ALL {
                if u.arbitrary()? {
                    let (min, max) = setting.valid_range();
                    let value = match u.int_in_range(0..=3u8)? {
                        0 => min,
                        1 => max,
                        _ => u.int_in_range(min..=max)?,
                    };
                    settings.set(setting, Some(value));
                }
            }
            Frame::Settings(settings)
        }
        7 => Frame::Ping(u.arbitrary()?),
        8 => Frame::Pong(u.arbitrary()?),
        9 => Frame::GoAway(GoAway {
            last_session_id: SessionId(if u.arbitrary()? {
                u.int_in_range(0..=16)?
            } else {
                u.arbitrary()?
            }),
            code: wire_code(u)?,
            reason: text(u, MAX_REASON_LEN)?,
        }),
        _ => Frame::ConnClose(ConnClose {
            code: wire_code(u)?,
            retry_after_ms: u.arbitrary()?,
            reason: text(u, MAX_REASON_LEN)?,
        }),
    })
}

/// A frame that satisfies every rule of spec/frames.md, with any non-zero session ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidFrame(pub Frame);

impl<'a> Arbitrary<'a> for ValidFrame {
    fn arbitrary(u: &mut Unstructured<'a>) -> ArbResult<Self> {
        frame(u, Ids::Any).map(ValidFrame)
    }
}

/// A valid frame whose session ID is mostly one a short connection uses (1..=12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFrame(pub Frame);

impl<'a> Arbitrary<'a> for PeerFrame {
    fn arbitrary(u: &mut Unstructured<'a>) -> ArbResult<Self> {
        frame(u, Ids::Small).map(PeerFrame)
    }
}

/// Up to `max` valid frames, while the fuzzer says go on.
fn valid_frames(u: &mut Unstructured<'_>, max: usize) -> Vec<Frame> {
    let mut frames = Vec::new();
    while frames.len() < max {
        match u.arbitrary::<bool>() {
            Ok(true) => {}
            _ => break,
        }
        match frame(u, Ids::Any) {
            Ok(f) => frames.push(f),
            Err(_) => break,
        }
    }
    frames
}

// ---- round_trip and batching -------------------------------------------------------------

/// A valid frame sequence → encode → decode gives back the same frames, each alone and all
/// in one message; encoded lengths are exact.
pub fn round_trip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let frames = valid_frames(&mut u, 32);
    let mut total = 0;
    for frame in &frames {
        let mut one = BytesMut::new();
        frame.encode(&mut one);
        assert_eq!(one.len(), frame.encoded_len(), "{frame:?}");
        total += one.len();
        let header = Header::parse(&one).expect("a valid frame's header parses");
        assert_eq!(header.frame_type, frame.frame_type());
        assert_eq!(header.session_id, frame.session_id());
        let decoded = decode_message(one.freeze());
        assert_eq!(decoded.as_deref(), Ok(std::slice::from_ref(frame)));
    }
    let wire = encode_message(frames.iter()).freeze();
    assert_eq!(wire.len(), total);
    if frames.is_empty() {
        assert_eq!(decode_message(wire), Err(FrameError::EmptyMessage));
    } else {
        assert_eq!(decode_message(wire), Ok(frames));
    }
}

/// The same valid frames grouped into messages in any way decode to the same sequence,
/// and the messages' bytes concatenate to the one-message encoding.
pub fn batching(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let frames = valid_frames(&mut u, 48);
    let mut decoded = Vec::new();
    let mut concatenated = BytesMut::new();
    let mut rest = &frames[..];
    while !rest.is_empty() {
        // With the input used up, int_in_range gives 1: one frame per message.
        let n = u.int_in_range(1..=rest.len()).unwrap_or(1);
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let message = encode_message(group.iter()).freeze();
        concatenated.extend_from_slice(&message);
        let frames_of = decode_message(message).expect("a batch of valid frames decodes");
        assert_eq!(frames_of, group);
        decoded.extend(frames_of);
    }
    assert_eq!(decoded, frames);
    assert_eq!(
        concatenated.freeze(),
        encode_message(frames.iter()).freeze()
    );
}

// ---- connection ----------------------------------------------------------------------------

/// Limits and timeouts for one side, small enough that every limit is reachable.
#[derive(Debug, Arbitrary)]
struct FuzzConfig {
    frame_kib: u8,
    message: u16,
    sessions: u8,
    credit_messages: u8,
    credit_kib: u8,
    control_budget: u8,
    open_metadata: u16,
    opens_per_sec: u8,
    pending_opens: u8,
    recv_buffer_kib: u16,
    send_buffer_kib: u16,
    queued: u8,
    overhead: u8,
    tombstones: u8,
    session_rate: Option<FuzzRate>,
    connection_rate: Option<FuzzRate>,
    policy: u8,
    keepalive_ms: Option<u16>,
    keepalive_timeout_ms: u16,
    authorization_ms: u16,
    session_idle_ms: Option<u16>,
    shutdown_ms: u16,
    tombstone_ms: u16,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
struct FuzzRate {
    messages: u8,
    kib: u8,
    burst_messages: u8,
    burst_kib: u8,
}

impl FuzzRate {
    fn limits(self) -> RateLimits {
        RateLimits {
            messages_per_sec: u32::from(self.messages % 64),
            bytes_per_sec: u32::from(self.kib) * 1024,
            burst_messages: u32::from(self.burst_messages % 64),
            burst_bytes: u32::from(self.burst_kib) * 1024,
        }
    }
}

fn policy(p: u8) -> RatePolicy {
    match p % 3 {
        0 => RatePolicy::Throttle,
        1 => RatePolicy::CloseSession,
        _ => RatePolicy::CloseConnection,
    }
}

fn millis(ms: u16, min: u64) -> Duration {
    Duration::from_millis(u64::from(ms).max(min))
}

impl FuzzConfig {
    fn config(&self) -> Config {
        let mut c = Config::default();
        let l = &mut c.limits;
        l.max_frame_size = 1024 * (1 + u32::from(self.frame_kib % 16));
        l.max_message_size = 1 + u32::from(self.message);
        l.max_sessions = u32::from(self.sessions % 9);
        l.initial_credit_messages = 1 + u32::from(self.credit_messages % 16);
        l.initial_credit_bytes = 1024 * (1 + u32::from(self.credit_kib % 64));
        l.control_budget = 1 + u32::from(self.control_budget) * 4;
        l.max_open_metadata = u32::from(self.open_metadata % 8192);
        l.opens_per_sec = 1 + u32::from(self.opens_per_sec % 100);
        l.opens_burst = l.opens_per_sec;
        l.max_pending_opens = 1 + u32::from(self.pending_opens % 8);
        l.max_recv_buffer = 1024 * (1 + u64::from(self.recv_buffer_kib % 2048));
        l.max_send_buffer = 1024 * (1 + u64::from(self.send_buffer_kib % 2048));
        l.max_queued_messages = 1 + u32::from(self.queued % 16);
        l.per_message_overhead = u32::from(self.overhead % 128);
        l.max_tombstones = u32::from(self.tombstones % 16);
        l.session_rate = self.session_rate.map(FuzzRate::limits).unwrap_or_default();
        l.connection_rate = self
            .connection_rate
            .map(FuzzRate::limits)
            .unwrap_or_default();
        l.rate_policy = policy(self.policy);
        let t = &mut c.timeouts;
        // Lower bounds keep the number of timer rounds per `advance` small (exec/s).
        t.keepalive_interval = self.keepalive_ms.map(|ms| millis(ms, 100));
        t.keepalive_timeout = millis(self.keepalive_timeout_ms, 1);
        t.authorization = millis(self.authorization_ms, 1);
        t.session_idle = self.session_idle_ms.map(|ms| millis(ms, 100));
        t.shutdown_grace = millis(self.shutdown_ms, 1);
        t.tombstone_ttl = millis(self.tombstone_ms, 1);
        c
    }
}

/// The grant an application gives a peer's session.
#[derive(Debug, Arbitrary)]
struct FuzzGrant {
    permissions: u8,
    max_message: Option<u16>,
    rate: Option<FuzzRate>,
    policy: Option<u8>,
    extra: Option<(u8, u16)>,
    weight: u8,
}

impl FuzzGrant {
    fn grant(&self) -> Grant {
        let mut g = Grant::default().with_weight(self.weight);
        g.permissions = Permissions::from_bits(self.permissions % 4).unwrap_or(Permissions::BOTH);
        g.max_message_size = self.max_message.map(|m| u32::from(m).max(1));
        g.rate = self.rate.map(FuzzRate::limits);
        g.rate_policy = self.policy.map(policy);
        g.extra_credit = self
            .extra
            .map(|(m, b)| (u32::from(m % 32), u32::from(b) * 4));
        g
    }
}

/// Codes the application uses: never one that reports a protocol violation (1002, 1003,
/// 1007, 1009, 4004, 4005), so those can be attributed to the connection, plus a few
/// values not valid on the wire (refused with `InvalidCode`).
const APP_CODES: [u16; 16] = [
    1000, 1001, 1008, 1011, 1013, 3000, 3001, 4000, 4001, 4002, 4003, 4007, 4010, 4999, 1005, 0,
];

/// Codes an honest peer and a correct connection never produce between themselves.
const VIOLATIONS: [CloseCode; 4] = [
    CloseCode::PROTOCOL_ERROR,
    CloseCode::INVALID_DATA,
    CloseCode::FLOW_CONTROL,
    CloseCode::UNKNOWN_SESSION,
];

#[derive(Debug, Arbitrary)]
struct AppCode(u8);

impl AppCode {
    fn code(&self) -> CloseCode {
        CloseCode(APP_CODES[usize::from(self.0) % APP_CODES.len()])
    }
}

#[derive(Debug, Arbitrary)]
enum MsgSize {
    Tiny(u8),
    Small(u8),
    Medium(u16),
    Large(u16),
}

impl MsgSize {
    fn len(&self) -> usize {
        match self {
            MsgSize::Tiny(n) => usize::from(n % 16),
            MsgSize::Small(n) => usize::from(*n),
            MsgSize::Medium(n) => usize::from(n % 8192),
            MsgSize::Large(n) => usize::from(*n),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Delay {
    Micros(u16),
    Millis(u16),
    Seconds(u8),
}

impl Delay {
    fn duration(&self) -> Duration {
        match self {
            Delay::Micros(n) => Duration::from_micros(u64::from(*n)),
            Delay::Millis(n) => Duration::from_millis(u64::from(n % 2000)),
            Delay::Seconds(n) => Duration::from_secs(u64::from(n % 16)),
        }
    }
}

/// One step of the `connection` target. `server` picks the side; `pick` picks a session
/// among the side's live ones (or, past 240, a raw small ID that may be unknown).
#[derive(Debug, Arbitrary)]
enum Op {
    Open {
        server: bool,
        kind: u8,
        auth: u16,
    },
    Accept {
        server: bool,
        pick: u8,
        grant: FuzzGrant,
    },
    Reject {
        server: bool,
        pick: u8,
        code: AppCode,
    },
    Send {
        server: bool,
        pick: u8,
        size: MsgSize,
    },
    Recv {
        server: bool,
        pick: u8,
    },
    RecvAll {
        server: bool,
    },
    GrantCredit {
        server: bool,
        pick: u8,
        messages: u8,
        bytes: u16,
    },
    Finish {
        server: bool,
        pick: u8,
    },
    CloseSession {
        server: bool,
        pick: u8,
        code: AppCode,
    },
    Reset {
        server: bool,
        pick: u8,
        code: AppCode,
    },
    Revoke {
        server: bool,
        pick: u8,
    },
    GoAway {
        server: bool,
        code: AppCode,
    },
    Close {
        server: bool,
        code: AppCode,
    },
    Advance(Delay),
    Step,
    Drive,
    InjectBytes {
        server: bool,
        bytes: Vec<u8>,
    },
    InjectFrames {
        server: bool,
        frames: Vec<PeerFrame>,
    },
    InjectText {
        server: bool,
    },
    TransportClosed {
        server: bool,
    },
}

const CLIENT: usize = 0;
const SERVER: usize = 1;
/// Operations per execution: keeps each run cheap.
const MAX_OPS: usize = 64;

/// The deterministic body of message `seq` that `side` sent on `id`.
fn body(side: usize, id: SessionId, seq: u64, len: usize) -> Bytes {
    let mut state = (side as u64) << 62 ^ u64::from(id.0) << 30 ^ seq ^ (len as u64) << 44;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        v.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

struct Harness {
    pair: Pair,
    /// Messages each side's application queued per session, not yet read: (seq, len).
    sent: BTreeMap<(usize, u32), VecDeque<(u64, usize)>>,
    next_seq: u64,
    /// Raw input was fed to this side: its received messages are no longer checked.
    tainted: [bool; 2],
    /// Application commands issued on each side (each may queue a few control frames).
    commands: [usize; 2],
    /// Print every operation and event (set `MUX_FUZZ_TRACE` to triage a crash).
    trace: bool,
}

impl Harness {
    fn conn(&mut self, side: usize) -> &mut crate::Connection {
        if side == SERVER {
            &mut self.pair.server.conn
        } else {
            &mut self.pair.client.conn
        }
    }

    fn pick(&mut self, side: usize, pick: u8) -> SessionId {
        let mut ids: Vec<SessionId> = self.conn(side).session_ids().collect();
        ids.sort();
        if pick < 240 && !ids.is_empty() {
            ids[usize::from(pick) % ids.len()]
        } else {
            SessionId(u32::from(pick % 16))
        }
    }

    fn recv_one(&mut self, side: usize, id: SessionId) -> bool {
        let now = self.pair.now;
        let Some(message) = self.conn(side).recv(now, id) else {
            return false;
        };
        if self.tainted[side] {
            return true;
        }
        let sender = 1 - side;
        let expected = self
            .sent
            .get_mut(&(sender, id.0))
            .and_then(VecDeque::pop_front);
        let Some((seq, len)) = expected else {
            panic!("side {side} read a message on {id:?} that was never sent");
        };
        assert_eq!(
            message.len(),
            len,
            "side {side}: message {seq} on {id:?} has the wrong length"
        );
        assert!(
            message == body(sender, id, seq, len),
            "side {side}: message {seq} on {id:?} is not the one sent next"
        );
        true
    }

    fn apply(&mut self, op: &Op) {
        let now = self.pair.now;
        match op {
            Op::Open { server, kind, auth } => {
                let side = usize::from(*server);
                self.commands[side] += 1;
                let kind = match kind % 4 {
                    0 => "chat".to_owned(),
                    1 => String::new(),
                    2 => "é".repeat(usize::from(*kind)),
                    _ => "k".repeat(MAX_KIND_LEN + usize::from(kind % 3)),
                };
                let auth = Bytes::from(vec![7u8; usize::from(auth % 8192)]);
                let _ = self
                    .conn(side)
                    .open(now, &kind, auth, OpenRequest::default());
            }
            Op::Accept {
                server,
                pick,
                grant,
            } => {
                let side = usize::from(*server);
                self.commands[side] += 1;
                let id = self.pick(side, *pick);
                let _ = self.conn(side).accept(now, id, grant.grant());
            }
            Op::Reject { server, pick, code } => {
                let side = usize::from(*server);
                self.commands[side] += 1;
                let id = self.pick(side, *pick);
                let _ = self.conn(side).reject(now, id, code.code(), "no");
            }
            Op::Send { server, pick, size } => {
                let side = usize::from(*server);
                self.commands[side] += 1;
                let id = self.pick(side, *pick);
                let seq = self.next_seq;
                let len = size.len();
                if self
                    .conn(side)
                    .send(now, id, body(side, id, seq, len))
                    .is_ok()
                {
                    self.next_seq += 1;
                    self.sent
                        .entry((side, id.0))
                        .or_default()
                        .push_back((seq, len));
                }
            }
            Op::Recv { server, pick } => {
                let side = usize::from(*server);
                let id = self.pick(side, *pick);
                self.recv_one(side, id);
            }
            Op::RecvAll { server } => {
                let side = usize::from(*server);
                let ids: Vec<SessionId> = self.conn(side).session_ids().collect();
                for id in ids {
                    while self.recv_one(side, id) {}
                }
            }
            Op::GrantCredit {
                server,
                pick,
                messages,
                bytes,
            } => {
                let side = usize::from(*server);
                self.commands[side] += 1;
                let id = self.pick(side, *pick);
                let _ = self.conn(side).grant_credit(
                    now,
                    id,
                    u32::from(messages % 32),
                    u32::from(*bytes) * 4,
                );
            }
            Op::Finish { server, pick } => {
                let side = usize::from(*server);
                self.commands[side] += 1;
                let id = self.pick(side, *pick);
                let _ = self.conn(side).finish(now, id);
            }
            Op::CloseSession { server, pick, code } => {
                let side = usize::from(*server);
                self.commands[side] += 1;
                let id = self.pick(side, *pick);
                let _ = self.conn(side).close_session(now, id, code.code(), "bye");
            }
            Op::Reset { server, pick, code } => {
                let side = usize::from(*server);
                self.commands[side] += 1;
                let id = self.pick(side, *pick);
                let _ = self.conn(side).reset(now, id, code.code(), "abort");
            }
            Op::Revoke { server, pick } => {
                let side = usize::from(*server);
                self.commands[side] += 1;
                let id = self.pick(side, *pick);
                let _ = self.conn(side).revoke(now, id, "revoked");
            }
            Op::GoAway { server, code } => {
                let side = usize::from(*server);
                self.commands[side] += 1;
                self.conn(side).go_away(now, code.code(), "going");
            }
            Op::Close { server, code } => {
                let side = usize::from(*server);
                self.commands[side] += 1;
                self.conn(side).close(now, code.code(), "closing");
            }
            Op::Advance(delay) => {
                self.pair.advance(delay.duration());
                // handle_timeout(now) ran: nothing may still be due now.
                for side in [CLIENT, SERVER] {
                    let now = self.pair.now;
                    if let Some(t) = self.conn(side).poll_timeout() {
                        assert!(t > now, "side {side}: poll_timeout {t:?} not after {now:?} after handle_timeout");
                    }
                }
            }
            Op::Step => {
                self.pair.step();
            }
            Op::Drive => {
                assert!(
                    self.pair.drive_bounded(10_000),
                    "the pair did not go idle: livelock"
                );
                // A closed connection sends nothing more: what it had queued stays queued
                // (after the transport closed under a pending CONN_CLOSE, say). Frames
                // waiting for the peer's control budget go out at the pace deadline.
                for side in [CLIENT, SERVER] {
                    if self.conn(side).is_closed() || self.conn(side).control_waits_for_budget() {
                        continue;
                    }
                    let queued = self.conn(side).queued_control_frames();
                    assert_eq!(
                        queued, 0,
                        "side {side}: {queued} control frames left after a full drive"
                    );
                }
            }
            Op::InjectBytes { server, bytes } => {
                let side = usize::from(*server);
                self.tainted[side] = true;
                let mut bytes = bytes.clone();
                bytes.truncate(64 * 1024);
                self.conn(side).handle_message(now, Bytes::from(bytes));
            }
            Op::InjectFrames { server, frames } => {
                let side = usize::from(*server);
                self.tainted[side] = true;
                let message = encode_message(frames.iter().take(16).map(|f| &f.0)).freeze();
                self.conn(side).handle_message(now, message);
            }
            Op::InjectText { server } => {
                let side = usize::from(*server);
                self.tainted[side] = true;
                self.conn(side).handle_text_message(now);
            }
            Op::TransportClosed { server } => {
                let side = usize::from(*server);
                self.tainted[side] = true;
                self.conn(side).handle_transport_closed(now);
            }
        }
    }

    /// Drains both sides' events, checking them.
    fn check_events(&mut self) {
        let honest = !self.tainted[CLIENT] && !self.tainted[SERVER];
        for side in [CLIENT, SERVER] {
            let endpoint = if side == SERVER {
                &mut self.pair.server
            } else {
                &mut self.pair.client
            };
            endpoint.pull_events();
            for event in endpoint.events.drain(..) {
                if self.trace {
                    eprintln!("    {} event: {event:?}", ["client", "server"][side]);
                }
                let code = match &event {
                    Event::SessionClosed { code, .. } => {
                        assert!(code.is_valid_on_wire(), "side {side}: {event:?}");
                        *code
                    }
                    Event::ConnectionClosed { code, .. } => {
                        assert!(
                            code.is_valid_on_wire() || *code == CloseCode::ABNORMAL,
                            "side {side}: {event:?}"
                        );
                        *code
                    }
                    _ => continue,
                };
                assert!(
                    !(honest && VIOLATIONS.contains(&code)),
                    "side {side}: {event:?} between an honest pair"
                );
            }
        }
    }

    /// The resource invariants, which hold whatever the peer sent.
    fn check_side(&mut self, side: usize) {
        let now = self.pair.now;
        let commands = self.commands[side];
        let conn = self.conn(side);
        let lim = &conn.config().limits;
        let st = conn.stats();
        assert!(
            st.recv_buffered <= lim.max_recv_buffer,
            "side {side}: recv_buffered {} > {}",
            st.recv_buffered,
            lim.max_recv_buffer
        );
        assert!(
            st.send_buffered <= lim.max_send_buffer,
            "side {side}: send_buffered {} > {}",
            st.send_buffered,
            lim.max_send_buffer
        );
        assert!(
            conn.recv_reserved() <= lim.max_recv_buffer,
            "side {side}: recv_reserved {} > {}",
            conn.recv_reserved(),
            lim.max_recv_buffer
        );
        assert!(
            st.recv_buffered <= conn.recv_reserved(),
            "side {side}: recv_buffered {} > reserved {}",
            st.recv_buffered,
            conn.recv_reserved()
        );
        assert_eq!(
            st.sessions_live as usize,
            conn.session_count(),
            "side {side}: sessions_live"
        );

        let own_parity = if side == CLIENT { 1 } else { 0 };
        let ids: Vec<SessionId> = conn.session_ids().collect();
        let own = ids.iter().filter(|id| id.0 % 2 == own_parity).count();
        assert!(
            ids.len() - own <= lim.max_sessions as usize,
            "side {side}: {} peer sessions > {}",
            ids.len() - own,
            lim.max_sessions
        );
        if let Some(peer) = conn.peer_settings() {
            assert!(
                own <= peer.max_sessions as usize,
                "side {side}: {own} own sessions > {}",
                peer.max_sessions
            );
        }
        assert!(
            conn.pending_open_count() <= lim.max_pending_opens as usize,
            "side {side}: pending opens"
        );
        assert!(
            conn.tombstone_count() <= lim.max_tombstones as usize,
            "side {side}: tombstones"
        );
        for id in &ids {
            let ss = conn.session_stats(*id).expect("a live session has stats");
            let (wm, wb) = ss.recv_window;
            assert!(
                ss.recv_held_messages <= wm && ss.recv_queued_bytes <= u64::from(wb),
                "side {side}: {id:?} holds {}/{} beyond its window {wm}/{wb}",
                ss.recv_held_messages,
                ss.recv_queued_bytes
            );
            assert!(ss.recv_queued_messages <= ss.recv_held_messages);
        }

        // Every queued control frame is paid for: by an application command, by a control
        // frame charged to the budget, or by a session ending (its CLOSE or RESET), plus one
        // CREDIT per live session.
        let closes: u64 = st.closes_by_code.iter().map(|(_, n)| n).sum::<u64>() + st.other_closes;
        let bound = 3 * commands as u64 + st.control_frames_charged + closes + ids.len() as u64 + 4;
        assert!(
            conn.queued_control_frames() as u64 <= bound,
            "side {side}: {} control frames queued, bound {bound}",
            conn.queued_control_frames()
        );

        let deadlines: Vec<(SessionId, Timestamp)> = conn.pending_open_deadlines().collect();
        assert_eq!(deadlines.len(), conn.pending_open_count());
        for (id, deadline) in &deadlines {
            assert!(
                *deadline > now,
                "side {side}: authorization deadline of {id:?} passed"
            );
        }
        assert!(
            deadlines.windows(2).all(|w| w[0].1 <= w[1].1),
            "side {side}: deadlines out of order"
        );
        for len in conn.wait_list_lengths() {
            assert!(
                len <= conn.session_count(),
                "side {side}: a wait list longer than the live sessions"
            );
        }
        let timeout = conn.poll_timeout();
        if let Some(t) = timeout {
            assert!(
                t >= now,
                "side {side}: poll_timeout {t:?} before now {now:?}"
            );
        }
        if conn.is_closed() {
            assert_eq!(timeout, None, "side {side}: a timeout after close");
            assert_eq!(conn.session_count(), 0, "side {side}: sessions after close");
            assert!(conn.close_code().is_some());
        }
        if conn.session_count() == 0 {
            let st = conn.stats();
            assert_eq!(
                (st.recv_buffered, st.send_buffered, conn.recv_reserved()),
                (0, 0, 0),
                "side {side}: buffers held with no session live"
            );
        }
    }
}

/// An arbitrary sequence of operations over a [`Pair`]: both applications' commands, time
/// steps, transport steps, and raw peer input injected into either side.
///
/// After every step: no panic; the resource invariants ([`Harness::check_side`]); events
/// carry valid codes and, while nothing was injected, no protocol, flow-control or
/// unknown-session error; every message read is the next one its sender queued on that
/// session, byte for byte (unless raw input was fed to the reading side).
pub fn connection(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(client), Ok(server)) = (FuzzConfig::arbitrary(&mut u), FuzzConfig::arbitrary(&mut u))
    else {
        return;
    };
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS && !u.is_empty() {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    let mut h = Harness {
        pair: Pair::new(client.config(), server.config()),
        sent: BTreeMap::new(),
        next_seq: 0,
        tainted: [false; 2],
        commands: [0; 2],
        trace: std::env::var_os("MUX_FUZZ_TRACE").is_some(),
    };
    if h.trace {
        eprintln!("client {:?}\nserver {:?}", client.config(), server.config());
    }
    h.pair.drive();
    h.check_events();
    for op in &ops {
        if h.trace {
            eprintln!("t={:?} {op:?}", h.pair.now);
        }
        h.apply(op);
        h.check_events();
        h.check_side(CLIENT);
        h.check_side(SERVER);
    }
}

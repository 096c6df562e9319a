//! Runs every conformance scenario in `spec/scenarios/*.json` against mux-proto on its
//! virtual clock. The format is `spec/scenarios/README.md`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mux_proto::frame::{decode_message, encode_message, Frame, Setting, Settings};
use mux_proto::{
    CloseCode, Config, Connection, Event, Grant, OpenRequest, Permissions, RateLimits, RatePolicy,
    SessionId, Side, Timestamp,
};
use serde_json::{Map, Value};

mod json;
use json::{frame_from_json, frame_to_json, hex_decode, hex_encode};

fn setting(name: &str) -> Option<Setting> {
    Some(match name {
        "max_frame_size" => Setting::MaxFrameSize,
        "max_sessions" => Setting::MaxSessions,
        "initial_credit_messages" => Setting::InitialCreditMessages,
        "initial_credit_bytes" => Setting::InitialCreditBytes,
        "max_message_size" => Setting::MaxMessageSize,
        "control_budget" => Setting::ControlBudget,
        "max_open_metadata" => Setting::MaxOpenMetadata,
        "idle_timeout_ms" => Setting::IdleTimeoutMs,
        _ => return None,
    })
}

fn u32_of(ctx: &str, v: &Value) -> u32 {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or_else(|| panic!("{ctx}: not a u32: {v}"))
}

fn config(ctx: &str, limits: Option<&Value>, timeouts: Option<&Value>) -> Config {
    let mut config = Config::default();
    config.timeouts.keepalive_interval = None;
    // The scenarios' baseline (spec/scenarios/README.md#limits): the absent-setting frame
    // size, and exact credit, so no window growth.
    config.limits.max_frame_size = 16_384;
    config.limits.max_window_growth = 1;
    for (key, value) in timeouts.and_then(Value::as_object).into_iter().flatten() {
        let ms = Duration::from_millis(u64::from(u32_of(&format!("{ctx}: timeouts.{key}"), value)));
        let t = &mut config.timeouts;
        match key.as_str() {
            "keepalive_interval_ms" => t.keepalive_interval = Some(ms),
            "keepalive_timeout_ms" => t.keepalive_timeout = ms,
            other => panic!("{ctx}: unknown timeout {other}"),
        }
    }
    let Some(limits) = limits.and_then(Value::as_object) else {
        return config;
    };
    for (key, value) in limits {
        let n = u32_of(&format!("{ctx}: limits.{key}"), value);
        let l = &mut config.limits;
        match key.as_str() {
            "max_frame_size" => l.max_frame_size = n,
            "max_sessions" => l.max_sessions = n,
            "initial_credit_messages" => l.initial_credit_messages = n,
            "initial_credit_bytes" => l.initial_credit_bytes = n,
            "max_message_size" => l.max_message_size = n,
            "control_budget" => l.control_budget = n,
            "max_open_metadata" => l.max_open_metadata = n,
            "max_pending_opens" => l.max_pending_opens = n,
            "max_recv_buffer" => l.max_recv_buffer = u64::from(n),
            "max_tombstones" => l.max_tombstones = n,
            "connection_messages_per_sec" => l.connection_rate.messages_per_sec = n,
            "connection_bytes_per_sec" => l.connection_rate.bytes_per_sec = n,
            "connection_burst_messages" => l.connection_rate.burst_messages = n,
            "connection_burst_bytes" => l.connection_rate.burst_bytes = n,
            "opens_per_sec" => {
                l.opens_per_sec = n;
                l.opens_burst = n;
            }
            other => panic!("{ctx}: unknown limit {other}"),
        }
    }
    config
}

fn settings(ctx: &str, value: &Value) -> Settings {
    let mut s = Settings::default();
    for (key, v) in value
        .as_object()
        .unwrap_or_else(|| panic!("{ctx}: peer_settings"))
    {
        let id = setting(key).unwrap_or_else(|| panic!("{ctx}: unknown setting {key}"));
        s = s.with(id, u32_of(ctx, v));
    }
    s
}

/// The filler byte of a `payload_len` payload (spec/scenarios/README.md#frames).
const FILLER: u8 = b'x';

/// A scenario frame in the vectors' form, with `payload_len` (DATA) expanded to `payload`.
fn scenario_frame(ctx: &str, value: &Value) -> Frame {
    let mut value = value.clone();
    if let Some(obj) = value.as_object_mut() {
        if let Some(len) = obj.remove("payload_len") {
            let len = usize::try_from(u32_of(ctx, &len)).unwrap_or(0);
            obj.insert(
                "payload".into(),
                Value::from(hex_encode(&vec![FILLER; len])),
            );
        }
    }
    frame_from_json(ctx, &value)
}

/// A message given as `payload` (hex) or `payload_len` (filler bytes).
fn message_of(ctx: &str, value: &Value) -> Bytes {
    if let Some(len) = value.get("payload_len") {
        let len = usize::try_from(u32_of(ctx, len)).unwrap_or(0);
        return Bytes::from(vec![FILLER; len]);
    }
    let hex = value["payload"]
        .as_str()
        .unwrap_or_else(|| panic!("{ctx}: payload or payload_len"));
    Bytes::from(hex_decode(hex).unwrap_or_else(|e| panic!("{ctx}: {e}")))
}

fn refused(value: &Value) -> bool {
    value.get("refused").and_then(Value::as_bool) == Some(true)
}

/// An endpoint under test and what it has sent and reported, not yet expected.
struct Run {
    ctx: String,
    conn: Connection,
    now: Timestamp,
    sent: VecDeque<Frame>,
    events: VecDeque<Event>,
    settings_seen: bool,
    /// The endpoint has sent CONN_CLOSE: anything it sends afterwards is an error (M-CONN-1).
    conn_close_sent: bool,
}

impl Run {
    fn drain(&mut self) {
        let mut buf = BytesMut::new();
        while self.conn.poll_transmit(self.now, &mut buf) {
            let frames = decode_message(buf.split().freeze()).unwrap_or_else(|e| {
                panic!("{}: the endpoint sent a malformed message: {e}", self.ctx)
            });
            for frame in frames {
                if !self.settings_seen {
                    assert!(
                        matches!(frame, Frame::Settings(_)),
                        "{}: first frame sent is not SETTINGS: {frame:?}",
                        self.ctx
                    );
                    self.settings_seen = true;
                    continue;
                }
                assert!(
                    !self.conn_close_sent,
                    "{}: sent {frame:?} after CONN_CLOSE",
                    self.ctx
                );
                self.conn_close_sent = matches!(frame, Frame::ConnClose(_));
                self.sent.push_back(frame);
            }
        }
        while let Some(event) = self.conn.poll_event() {
            self.events.push_back(event);
        }
    }

    fn send(&mut self, message: Bytes) {
        self.conn.handle_message(self.now, message);
        self.drain();
    }

    /// Moves the virtual clock to `to`, firing every deadline on the way at its own time.
    fn advance(&mut self, to: Timestamp) {
        for _ in 0..100_000 {
            match self.conn.poll_timeout() {
                Some(at) if at <= to => {
                    self.now = self.now.max(at);
                    self.conn.handle_timeout(self.now);
                    self.drain();
                }
                _ => {
                    self.now = to;
                    self.conn.handle_timeout(self.now);
                    self.drain();
                    return;
                }
            }
        }
        panic!("{}: timers keep firing without time passing", self.ctx);
    }
}

fn matches_pattern(actual: &Frame, pattern: &Map<String, Value>) -> bool {
    let actual = frame_to_json(actual);
    pattern.iter().all(|(k, v)| match k.as_str() {
        "payload_len" => {
            let len = actual["payload"].as_str().map(|h| h.len() / 2);
            len.is_some() && len.map(|l| l as u64) == v.as_u64()
        }
        _ => actual.get(k) == Some(v),
    })
}

fn event_matches(event: &Event, pattern: &Map<String, Value>) -> bool {
    let want_id = pattern.get("id").and_then(Value::as_u64);
    let want_code = pattern.get("code").and_then(Value::as_u64);
    let want_last = pattern.get("last_session_id").and_then(Value::as_u64);
    let id_ok = |id: SessionId| want_id.is_none_or(|w| w == u64::from(id.get()));
    let code_ok = |code: CloseCode| want_code.is_none_or(|w| w == u64::from(code.get()));
    match (pattern.get("event").and_then(Value::as_str), event) {
        (Some("incoming"), Event::Incoming { id, .. }) => id_ok(*id),
        (Some("opened"), Event::Opened { id, .. }) => id_ok(*id),
        (Some("message"), Event::Readable { id }) => id_ok(*id),
        (Some("fin"), Event::Finished { id }) => id_ok(*id),
        (Some("closed"), Event::SessionClosed { id, code, .. }) => id_ok(*id) && code_ok(*code),
        (
            Some("goaway"),
            Event::GoAway {
                last_session_id,
                code,
            },
        ) => code_ok(*code) && want_last.is_none_or(|w| w == u64::from(last_session_id.get())),
        (Some("connection_closed"), Event::ConnectionClosed { code, .. }) => code_ok(*code),
        _ => false,
    }
}

/// The role a scenario's `side` names.
fn side_of(ctx: &str, scenario: &Value) -> Side {
    match scenario["side"].as_str() {
        Some("server") => Side::Server,
        Some("client") => Side::Client,
        other => panic!("{ctx}: side {other:?}"),
    }
}

/// Runs one scenario; panics at the first step that fails. Returns the side it ran as, so
/// the caller can tell that both roles were exercised.
fn run(file: &str, scenario: &Value) -> Side {
    let ctx = format!("{file}: {}", scenario["name"].as_str().unwrap_or("?"));
    assert_eq!(
        scenario["name"]
            .as_str()
            .map(|n| format!("{n}.json"))
            .as_deref(),
        Some(file),
        "{ctx}: name and file name differ"
    );
    let side = side_of(&ctx, scenario);
    let now = Timestamp::from_millis(0);
    let config = config(&ctx, scenario.get("limits"), scenario.get("timeouts"));
    let mut r = Run {
        conn: Connection::new(side, config, now),
        ctx: ctx.clone(),
        now,
        sent: VecDeque::new(),
        events: VecDeque::new(),
        settings_seen: false,
        conn_close_sent: false,
    };
    r.drain();
    assert!(r.settings_seen, "{ctx}: no SETTINGS sent at once (M-SET-1)");
    if let Some(peer) = scenario.get("peer_settings") {
        let frame = Frame::Settings(settings(&ctx, peer));
        r.send(encode_message([&frame]).freeze());
    }
    let steps = scenario["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: steps"));
    for (i, step) in steps.iter().enumerate() {
        let ctx = format!("{ctx}: step {i} {step}");
        let step = step
            .as_object()
            .unwrap_or_else(|| panic!("{ctx}: not an object"));
        assert_eq!(step.len(), 1, "{ctx}: one key per step");
        let (key, value) = step.iter().next().unwrap_or_else(|| panic!("{ctx}"));
        if !r.act(&ctx, key, value) {
            r.check(&ctx, key, value);
        }
    }
    side
}

/// The grant of an `accept` step: the default for a bare ID, else the object's fields
/// (`permissions` as the wire byte, `max_message_size`, the four rate fields, `policy`).
fn grant(ctx: &str, value: &Value) -> Grant {
    let mut grant = Grant::default();
    let Some(obj) = value.as_object() else {
        return grant;
    };
    let field = |key: &str| obj.get(key).map(|v| u32_of(&format!("{ctx}: {key}"), v));
    if let Some(bits) = field("permissions") {
        let bits = u8::try_from(bits).ok().and_then(Permissions::from_bits);
        grant.permissions = bits.unwrap_or_else(|| panic!("{ctx}: permissions"));
    }
    grant.max_message_size = field("max_message_size");
    let rate = RateLimits {
        messages_per_sec: field("messages_per_sec").unwrap_or(0),
        bytes_per_sec: field("bytes_per_sec").unwrap_or(0),
        burst_messages: field("burst_messages").unwrap_or(0),
        burst_bytes: field("burst_bytes").unwrap_or(0),
    };
    if rate != RateLimits::default() {
        grant.rate = Some(rate);
    }
    grant.rate_policy = obj.get("policy").map(|p| match p.as_str() {
        Some("throttle") => RatePolicy::Throttle,
        Some("close_session") => RatePolicy::CloseSession,
        Some("close_connection") => RatePolicy::CloseConnection,
        other => panic!("{ctx}: policy {other:?}"),
    });
    grant
}

fn code_of(ctx: &str, value: &Value) -> CloseCode {
    CloseCode(u16::try_from(u32_of(ctx, value)).unwrap_or_else(|_| panic!("{ctx}: code")))
}

impl Run {
    /// Performs a step that acts (the peer sends, time passes, the application calls);
    /// false if `key` is not such a step.
    fn act(&mut self, ctx: &str, key: &str, value: &Value) -> bool {
        match key {
            "send" => {
                let frames: Vec<Frame> = value
                    .as_array()
                    .unwrap_or_else(|| panic!("{ctx}"))
                    .iter()
                    .map(|f| scenario_frame(ctx, f))
                    .collect();
                self.send(encode_message(frames.iter()).freeze());
            }
            "send_hex" => {
                let bytes = hex_decode(value.as_str().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                self.send(Bytes::from(bytes));
            }
            "advance_ms" => {
                let ms = value.as_u64().unwrap_or_else(|| panic!("{ctx}"));
                self.advance(self.now.saturating_add(Duration::from_millis(ms)));
            }
            _ => {
                if !self.call(ctx, key, value) {
                    return false;
                }
                self.drain();
            }
        }
        true
    }

    /// Performs an application call; false if `key` is not one.
    fn call(&mut self, ctx: &str, key: &str, value: &Value) -> bool {
        let now = self.now;
        let id = || SessionId(u32_of(ctx, value.get("id").unwrap_or(value)));
        match key {
            "accept" => self
                .conn
                .accept(now, id(), grant(ctx, value))
                .unwrap_or_else(|e| panic!("{ctx}: accept: {e:?}")),
            "reject" => {
                let code = code_of(ctx, &value["code"]);
                self.conn
                    .reject(now, id(), code, "")
                    .unwrap_or_else(|e| panic!("{ctx}: reject: {e:?}"));
            }
            "open" => {
                let kind = value["kind"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{ctx}: kind"));
                let result = self
                    .conn
                    .open(now, kind, Bytes::new(), OpenRequest::default());
                assert_eq!(result.is_err(), refused(value), "{ctx}: open: {result:?}");
            }
            "write" => {
                let result = self.conn.send(now, id(), message_of(ctx, value));
                assert_eq!(result.is_err(), refused(value), "{ctx}: send: {result:?}");
            }
            "finish" => self
                .conn
                .finish(now, id())
                .unwrap_or_else(|e| panic!("{ctx}: finish: {e:?}")),
            "close" => {
                let code = code_of(ctx, &value["code"]);
                self.conn
                    .close_session(now, id(), code, "")
                    .unwrap_or_else(|e| panic!("{ctx}: close: {e:?}"));
            }
            "go_away" => self.conn.go_away(now, code_of(ctx, &value["code"]), ""),
            "read" => while self.conn.recv(now, id()).is_some() {},
            "expect_message" => {
                let got = self.conn.recv(now, id());
                let want = message_of(ctx, value);
                assert!(
                    got.as_ref() == Some(&want),
                    "{ctx}: read {:?} bytes",
                    got.map(|m| m.len())
                );
            }
            _ => return false,
        }
        true
    }

    /// Checks an expectation step against what is pending; panics on a mismatch.
    fn check(&mut self, ctx: &str, key: &str, value: &Value) {
        match key {
            "expect" => {
                for pattern in value.as_array().unwrap_or_else(|| panic!("{ctx}")) {
                    let pattern = pattern.as_object().unwrap_or_else(|| panic!("{ctx}"));
                    let next = self.sent.pop_front();
                    assert!(
                        next.as_ref().is_some_and(|f| matches_pattern(f, pattern)),
                        "{ctx}: expected {pattern:?}, got {next:?} (then {:?})",
                        self.sent
                    );
                }
                assert!(self.sent.is_empty(), "{ctx}: also sent {:?}", self.sent);
            }
            "expect_nothing" => {
                assert_eq!(
                    value,
                    &Value::Bool(true),
                    "{ctx}: expect_nothing takes true"
                );
                assert!(self.sent.is_empty(), "{ctx}: sent {:?}", self.sent);
            }
            "expect_conn_close" => {
                let code = u64::from(u32_of(ctx, value));
                let last = self.sent.pop_back();
                assert!(
                    matches!(&last, Some(Frame::ConnClose(c)) if u64::from(c.code.get()) == code),
                    "{ctx}: last frame {last:?}"
                );
                self.sent.clear();
                assert!(self.conn.is_closed(), "{ctx}: the endpoint still runs");
            }
            "expect_event" => {
                let pattern = value.as_object().unwrap_or_else(|| panic!("{ctx}"));
                let pos = self.events.iter().position(|e| event_matches(e, pattern));
                assert!(pos.is_some(), "{ctx}: events {:?}", self.events);
                // Only the matched event is taken: the spec does not order the events of one
                // input (a GOAWAY's event and the sessions it ends, say).
                if let Some(pos) = pos {
                    self.events.remove(pos);
                }
            }
            other => panic!("{ctx}: unknown step {other}"),
        }
    }
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("spec")
        .join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn load(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs every scenario, and reports all that fail rather than only the first.
#[test]
fn every_scenario_passes() {
    let (mut servers, mut clients, mut failed) = (0, 0, Vec::new());
    for path in scenario_files() {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        let file = file.unwrap_or_default();
        let scenario = load(&path);
        match std::panic::catch_unwind(|| run(&file, &scenario)) {
            Ok(Side::Server) => servers += 1,
            Ok(Side::Client) => clients += 1,
            Err(_) => failed.push(file),
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
    // Both roles are exercised: a runner that silently skipped one would pass with none.
    assert!(servers >= 20, "only {servers} server-side scenarios");
    assert!(clients >= 10, "only {clients} client-side scenarios");
}

/// Adds one to the number at `key`, if there is one: a wrong code, ID or length.
fn bump(obj: &mut Map<String, Value>, key: &str) -> bool {
    let Some(n) = obj.get(key).and_then(Value::as_u64) else {
        return false;
    };
    obj.insert(key.into(), Value::from(n.saturating_add(1)));
    true
}

/// The expectation step made wrong in its most specific field (a close code first, then a
/// length, a payload, an ID), or None for a step that expects nothing.
fn mutated(step: &Value) -> Option<Value> {
    let (key, value) = step.as_object()?.iter().next()?;
    let mut value = value.clone();
    let changed = match (key.as_str(), &mut value) {
        ("expect_conn_close", Value::Number(n)) => {
            value = Value::from(n.as_u64()?.saturating_add(1));
            true
        }
        ("expect", Value::Array(patterns)) => {
            let last = patterns.last_mut()?.as_object_mut()?;
            let keys = [
                "code",
                "payload_len",
                "last_session_id",
                "messages",
                "session_id",
            ];
            if !keys.iter().any(|k| bump(last, k)) {
                last.insert("payload".into(), Value::from("ee"));
            }
            true
        }
        ("expect_event" | "expect_message", Value::Object(obj)) => {
            ["code", "payload_len", "id"].iter().any(|k| bump(obj, k))
        }
        _ => false,
    };
    changed.then(|| serde_json::json!({ key.as_str(): value }))
}

/// Every scenario can fail: with its last expectation made wrong, it does not pass. A
/// runner that accepted anything, or a scenario that checked nothing, would fail here.
#[test]
fn every_scenario_fails_with_a_wrong_expectation() {
    for path in scenario_files() {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        let file = file.as_deref().unwrap_or("?");
        let mut scenario = load(&path);
        let steps = scenario["steps"]
            .as_array_mut()
            .unwrap_or_else(|| panic!("{file}: steps"));
        let target = steps.iter().rposition(|s| mutated(s).is_some());
        let target = target.unwrap_or_else(|| panic!("{file}: no expectation to make wrong"));
        let wrong = steps.get(target).and_then(mutated);
        if let (Some(slot), Some(wrong)) = (steps.get_mut(target), wrong) {
            *slot = wrong;
        }
        let outcome = std::panic::catch_unwind(|| run(file, &scenario));
        assert!(
            outcome.is_err(),
            "{file}: passed with step {target} made wrong"
        );
    }
}

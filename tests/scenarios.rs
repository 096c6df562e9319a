//! Runs every conformance scenario in `spec/scenarios/*.json` against mux-proto on its
//! virtual clock. The format is `spec/scenarios/README.md`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mux_proto::frame::{decode_message, encode_message, Frame, Setting, Settings};
use mux_proto::{CloseCode, Config, Connection, Event, Grant, SessionId, Side, Timestamp};
use serde_json::{Map, Value};

mod json;
use json::{frame_from_json, frame_to_json, hex_decode};

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

fn config(ctx: &str, limits: Option<&Value>) -> Config {
    let mut config = Config::default();
    config.timeouts.keepalive_interval = None;
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

/// An endpoint under test and what it has sent and reported, not yet expected.
struct Run {
    ctx: String,
    conn: Connection,
    now: Timestamp,
    sent: VecDeque<Frame>,
    events: VecDeque<Event>,
    settings_seen: bool,
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
}

fn matches_pattern(actual: &Frame, pattern: &Map<String, Value>) -> bool {
    let actual = frame_to_json(actual);
    pattern.iter().all(|(k, v)| actual.get(k) == Some(v))
}

fn event_matches(event: &Event, pattern: &Map<String, Value>) -> bool {
    let want_id = pattern.get("id").and_then(Value::as_u64);
    let want_code = pattern.get("code").and_then(Value::as_u64);
    let id_ok = |id: SessionId| want_id.is_none_or(|w| w == u64::from(id.get()));
    let code_ok = |code: CloseCode| want_code.is_none_or(|w| w == u64::from(code.get()));
    match (pattern.get("event").and_then(Value::as_str), event) {
        (Some("incoming"), Event::Incoming { id, .. }) => id_ok(*id),
        (Some("opened"), Event::Opened { id, .. }) => id_ok(*id),
        (Some("message"), Event::Readable { id }) => id_ok(*id),
        (Some("closed"), Event::SessionClosed { id, code, .. }) => id_ok(*id) && code_ok(*code),
        (Some("connection_closed"), Event::ConnectionClosed { code, .. }) => code_ok(*code),
        _ => false,
    }
}

fn run(file: &str, scenario: &Value) {
    let ctx = format!("{file}: {}", scenario["name"].as_str().unwrap_or("?"));
    let side = match scenario["side"].as_str() {
        Some("server") => Side::Server,
        Some("client") => Side::Client,
        other => panic!("{ctx}: side {other:?}"),
    };
    let now = Timestamp::from_millis(0);
    let mut r = Run {
        conn: Connection::new(side, config(&ctx, scenario.get("limits")), now),
        ctx: ctx.clone(),
        now,
        sent: VecDeque::new(),
        events: VecDeque::new(),
        settings_seen: false,
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
        match key.as_str() {
            "send" => {
                let frames: Vec<Frame> = value
                    .as_array()
                    .unwrap_or_else(|| panic!("{ctx}"))
                    .iter()
                    .map(|f| frame_from_json(&ctx, f))
                    .collect();
                r.send(encode_message(frames.iter()).freeze());
            }
            "send_hex" => {
                let bytes = hex_decode(value.as_str().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                r.send(Bytes::from(bytes));
            }
            "advance_ms" => {
                let ms = value.as_u64().unwrap_or_else(|| panic!("{ctx}"));
                r.now = r.now.saturating_add(Duration::from_millis(ms));
                r.conn.handle_timeout(r.now);
                r.drain();
            }
            "accept" => {
                let id = SessionId(u32_of(&ctx, value));
                r.conn
                    .accept(r.now, id, Grant::default())
                    .unwrap_or_else(|e| panic!("{ctx}: accept: {e:?}"));
                r.drain();
            }
            "reject" => {
                let id = SessionId(u32_of(&ctx, &value["id"]));
                let code = CloseCode(u16::try_from(u32_of(&ctx, &value["code"])).unwrap_or(0));
                r.conn
                    .reject(r.now, id, code, "")
                    .unwrap_or_else(|e| panic!("{ctx}: reject: {e:?}"));
                r.drain();
            }
            "read" => {
                let id = SessionId(u32_of(&ctx, value));
                while r.conn.recv(r.now, id).is_some() {}
                r.drain();
            }
            "expect" => {
                for pattern in value.as_array().unwrap_or_else(|| panic!("{ctx}")) {
                    let pattern = pattern.as_object().unwrap_or_else(|| panic!("{ctx}"));
                    let next = r.sent.pop_front();
                    assert!(
                        next.as_ref().is_some_and(|f| matches_pattern(f, pattern)),
                        "{ctx}: expected {pattern:?}, got {next:?} (then {:?})",
                        r.sent
                    );
                }
                assert!(r.sent.is_empty(), "{ctx}: also sent {:?}", r.sent);
            }
            "expect_nothing" => {
                assert!(r.sent.is_empty(), "{ctx}: sent {:?}", r.sent);
            }
            "expect_conn_close" => {
                let code = u64::from(u32_of(&ctx, value));
                let last = r.sent.pop_back();
                assert!(
                    matches!(&last, Some(Frame::ConnClose(c)) if u64::from(c.code.get()) == code),
                    "{ctx}: last frame {last:?}"
                );
                r.sent.clear();
                assert!(r.conn.is_closed(), "{ctx}: the endpoint still runs");
            }
            "expect_event" => {
                let pattern = value.as_object().unwrap_or_else(|| panic!("{ctx}"));
                let pos = r.events.iter().position(|e| event_matches(e, pattern));
                assert!(pos.is_some(), "{ctx}: events {:?}", r.events);
                if let Some(pos) = pos {
                    r.events.drain(..=pos);
                }
            }
            other => panic!("{ctx}: unknown step {other}"),
        }
    }
}

#[test]
fn every_scenario_passes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("spec")
        .join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "only {} scenarios", files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let scenario: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        run(file.as_deref().unwrap_or("?"), &scenario);
    }
}

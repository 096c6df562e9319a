//! The vectors' JSON form of frames (spec/vectors/README.md#frames), both ways. Shared by
//! `tests/vectors.rs` and `tests/scenarios.rs`.
#![allow(dead_code)]

use std::collections::BTreeSet;

use bytes::Bytes;
use mux_proto::frame::{
    Accept, ConnClose, Credit, Data, Frame, FrameType, GoAway, Open, OpenRequest, Permissions,
    RateLimits, SessionClose, Setting, Settings, Text,
};
use mux_proto::{CloseCode, SessionId};
use serde_json::{json, Map, Value};

pub fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    fn nibble(c: u8) -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(format!(
                "invalid hex digit {:?} (lowercase only)",
                c as char
            )),
        }
    }
    let s = s.as_bytes();
    if s.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    s.chunks_exact(2)
        .map(|pair| Ok((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn text_json(t: &Text) -> Value {
    Value::from(t.as_str())
}

/// The vectors' JSON form of a decoded frame.
pub fn frame_to_json(frame: &Frame) -> Value {
    let mut v = json!({
        "type": frame.frame_type().name(),
        "session_id": frame.session_id().get(),
    });
    let fields = match frame {
        Frame::Data(f) => json!({
            "end": f.end,
            "fin": f.fin,
            "payload": hex_encode(&f.payload),
        }),
        Frame::Open(f) => json!({
            "request": {
                "max_message_size": f.request.max_message_size,
                "messages_per_sec": f.request.messages_per_sec,
                "bytes_per_sec": f.request.bytes_per_sec,
            },
            "kind": text_json(&f.kind),
            "auth": hex_encode(f.auth.expose()),
        }),
        Frame::Accept(f) => json!({
            "permissions": f.permissions.bits(),
            "max_message_size": f.max_message_size,
            "rate": {
                "messages_per_sec": f.rate.messages_per_sec,
                "bytes_per_sec": f.rate.bytes_per_sec,
                "burst_messages": f.rate.burst_messages,
                "burst_bytes": f.rate.burst_bytes,
            },
        }),
        Frame::Credit(f) => json!({ "messages": f.messages, "bytes": f.bytes }),
        Frame::Close(f) | Frame::Reset(f) => json!({
            "code": f.code.get(),
            "retry_after_ms": f.retry_after_ms,
            "reason": text_json(&f.reason),
        }),
        Frame::Settings(f) => {
            let settings: Map<String, Value> = f
                .iter()
                .map(|(s, value)| (s.name().to_owned(), Value::from(value)))
                .collect();
            json!({ "settings": settings })
        }
        Frame::Ping(p) | Frame::Pong(p) => json!({ "payload": hex_encode(&p.to_be_bytes()) }),
        Frame::GoAway(f) => json!({
            "last_session_id": f.last_session_id.get(),
            "code": f.code.get(),
            "reason": text_json(&f.reason),
        }),
        Frame::ConnClose(f) => json!({
            "code": f.code.get(),
            "retry_after_ms": f.retry_after_ms,
            "reason": text_json(&f.reason),
        }),
    };
    let (Value::Object(out), Value::Object(fields)) = (&mut v, fields) else {
        unreachable!("json! objects");
    };
    out.extend(fields);
    v
}

/// Reads a JSON object field strictly: every key must be consumed, so a typo fails the test.
struct Fields<'a> {
    ctx: String,
    map: &'a Map<String, Value>,
    used: BTreeSet<&'a str>,
}

impl<'a> Fields<'a> {
    fn new(ctx: String, value: &'a Value) -> Self {
        let map = value
            .as_object()
            .unwrap_or_else(|| panic!("{ctx}: expected an object, got {value}"));
        Fields {
            ctx,
            map,
            used: BTreeSet::new(),
        }
    }

    fn get(&mut self, key: &'a str) -> &'a Value {
        self.used.insert(key);
        self.map
            .get(key)
            .unwrap_or_else(|| panic!("{}: missing field {key:?}", self.ctx))
    }

    fn u32(&mut self, key: &'a str) -> u32 {
        let v = self.get(key);
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_else(|| panic!("{}: {key} is not a u32: {v}", self.ctx))
    }

    fn u16(&mut self, key: &'a str) -> u16 {
        let n = self.u32(key);
        u16::try_from(n).unwrap_or_else(|_| panic!("{}: {key} is not a u16: {n}", self.ctx))
    }

    fn u8(&mut self, key: &'a str) -> u8 {
        let n = self.u32(key);
        u8::try_from(n).unwrap_or_else(|_| panic!("{}: {key} is not a u8: {n}", self.ctx))
    }

    fn bool(&mut self, key: &'a str) -> bool {
        let v = self.get(key);
        v.as_bool()
            .unwrap_or_else(|| panic!("{}: {key} is not a bool: {v}", self.ctx))
    }

    fn str(&mut self, key: &'a str) -> &'a str {
        let v = self.get(key);
        v.as_str()
            .unwrap_or_else(|| panic!("{}: {key} is not a string: {v}", self.ctx))
    }

    fn bytes(&mut self, key: &'a str) -> Bytes {
        let s = self.str(key);
        Bytes::from(hex_decode(s).unwrap_or_else(|e| panic!("{}: {key}: {e}", self.ctx)))
    }

    fn text(&mut self, key: &'a str) -> Text {
        Text::from_utf8(Bytes::from(self.str(key).to_owned())).expect("a JSON string is UTF-8")
    }

    fn code(&mut self, key: &'a str) -> CloseCode {
        CloseCode(self.u16(key))
    }

    fn sub(&mut self, key: &'a str) -> Fields<'a> {
        let ctx = format!("{}.{key}", self.ctx);
        Fields::new(ctx, self.get(key))
    }

    fn finish(self) {
        let extra: Vec<&String> = self
            .map
            .keys()
            .filter(|k| !self.used.contains(k.as_str()))
            .collect();
        assert!(
            extra.is_empty(),
            "{}: unexpected fields {extra:?}",
            self.ctx
        );
    }
}

/// Builds the frame a vector's JSON describes, independently of the decoder.
pub fn frame_from_json(ctx: &str, value: &Value) -> Frame {
    let mut f = Fields::new(ctx.to_owned(), value);
    let type_name = f.str("type");
    let frame_type = FrameType::ALL
        .into_iter()
        .find(|t| t.name() == type_name)
        .unwrap_or_else(|| panic!("{ctx}: unknown frame type {type_name:?}"));
    let session_id = SessionId(f.u32("session_id"));
    let frame = match frame_type {
        FrameType::Data => Frame::Data(Data {
            session_id,
            end: f.bool("end"),
            fin: f.bool("fin"),
            payload: f.bytes("payload"),
        }),
        FrameType::Open => {
            let mut r = f.sub("request");
            let request = OpenRequest {
                max_message_size: r.u32("max_message_size"),
                messages_per_sec: r.u32("messages_per_sec"),
                bytes_per_sec: r.u32("bytes_per_sec"),
            };
            r.finish();
            Frame::Open(Open {
                session_id,
                request,
                kind: f.text("kind"),
                auth: f.bytes("auth").into(),
            })
        }
        FrameType::Accept => {
            let bits = f.u8("permissions");
            let permissions = Permissions::from_bits(bits)
                .unwrap_or_else(|| panic!("{ctx}: invalid permissions {bits}"));
            let max_message_size = f.u32("max_message_size");
            let mut r = f.sub("rate");
            let rate = RateLimits {
                messages_per_sec: r.u32("messages_per_sec"),
                bytes_per_sec: r.u32("bytes_per_sec"),
                burst_messages: r.u32("burst_messages"),
                burst_bytes: r.u32("burst_bytes"),
            };
            r.finish();
            Frame::Accept(Accept {
                session_id,
                permissions,
                max_message_size,
                rate,
            })
        }
        FrameType::Credit => Frame::Credit(Credit {
            session_id,
            messages: f.u32("messages"),
            bytes: f.u32("bytes"),
        }),
        FrameType::Close | FrameType::Reset => {
            let close = SessionClose {
                session_id,
                code: f.code("code"),
                retry_after_ms: f.u32("retry_after_ms"),
                reason: f.text("reason"),
            };
            if frame_type == FrameType::Close {
                Frame::Close(close)
            } else {
                Frame::Reset(close)
            }
        }
        FrameType::Settings => {
            let map = f
                .get("settings")
                .as_object()
                .unwrap_or_else(|| panic!("{ctx}: settings is not an object"));
            let mut settings = Settings::default();
            for (name, value) in map {
                let setting = Setting::ALL
                    .into_iter()
                    .find(|s| s.name() == name)
                    .unwrap_or_else(|| panic!("{ctx}: unknown setting {name:?}"));
                let value = value
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or_else(|| panic!("{ctx}: setting {name} is not a u32"));
                let (min, max) = setting.valid_range();
                assert!(
                    (min..=max).contains(&value),
                    "{ctx}: {name} = {value} is outside its range"
                );
                settings.set(setting, Some(value));
            }
            Frame::Settings(settings)
        }
        FrameType::Ping | FrameType::Pong => {
            let payload = f.bytes("payload");
            let payload: [u8; 8] = payload[..]
                .try_into()
                .unwrap_or_else(|_| panic!("{ctx}: PING/PONG payload is not 8 bytes"));
            let payload = u64::from_be_bytes(payload);
            if frame_type == FrameType::Ping {
                Frame::Ping(payload)
            } else {
                Frame::Pong(payload)
            }
        }
        FrameType::GoAway => Frame::GoAway(GoAway {
            last_session_id: SessionId(f.u32("last_session_id")),
            code: f.code("code"),
            reason: f.text("reason"),
        }),
        FrameType::ConnClose => Frame::ConnClose(ConnClose {
            code: f.code("code"),
            retry_after_ms: f.u32("retry_after_ms"),
            reason: f.text("reason"),
        }),
    };
    f.finish();
    assert_eq!(
        frame.session_id(),
        session_id,
        "{ctx}: connection frames use session_id 0"
    );
    frame
}

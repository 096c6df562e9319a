//! Checks every test vector in `spec/vectors/*.json` against the frame codec.
//!
//! Each vector's `hex` is decoded with [`Frames`]; the frames it yields must equal the
//! vector's `frames` (or `frames_before_error`) exactly, and the error, if any, must equal
//! the vector's `error` in every field. Expected frames are also built from the JSON and
//! compared with the decoded ones, and canonical vectors must re-encode to their exact bytes.
//! The schema is described in `spec/vectors/README.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use mux_proto::frame::{
    encode_message, Accept, ConnClose, Credit, Data, Frame, FrameError, FrameType, GoAway, Open,
    OpenRequest, Permissions, RateLimits, SessionClose, Setting, Settings, Text,
};
use mux_proto::{CloseCode, SessionId};
use serde_json::{json, Map, Value};

/// Every `FrameError::kind()`; the vectors must exercise each one.
const ERROR_KINDS: [&str; 14] = [
    "EmptyMessage",
    "TruncatedHeader",
    "UnsupportedVersion",
    "UnknownType",
    "ReservedFlags",
    "InvalidFlags",
    "WrongSession",
    "BadLength",
    "TruncatedPayload",
    "TruncatedField",
    "TrailingBytes",
    "InvalidUtf8",
    "InvalidValue",
    "DuplicateSetting",
];

const MIN_VECTORS: usize = 80;

struct Vector {
    file: String,
    name: String,
    value: Map<String, Value>,
}

impl Vector {
    fn ctx(&self) -> String {
        format!("{}: {}", self.file, self.name)
    }
}

fn load_vectors() -> Vec<Vector> {
    let dir = mux_suite::vectors_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no vector files in {}", dir.display());

    let mut vectors = Vec::new();
    for path in paths {
        let file = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).expect("readable vector file");
        let doc: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: invalid JSON: {e}"));
        let doc = doc
            .as_object()
            .unwrap_or_else(|| panic!("{file}: not an object"));
        assert!(
            doc.get("description").is_some_and(Value::is_string),
            "{file}: missing description"
        );
        let list = doc
            .get("vectors")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{file}: missing vectors array"));
        for v in list {
            let value = v
                .as_object()
                .unwrap_or_else(|| panic!("{file}: vector is not an object"))
                .clone();
            let name = value
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{file}: vector without a name"))
                .to_owned();
            vectors.push(Vector {
                file: file.clone(),
                name,
                value,
            });
        }
    }
    vectors
}

fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
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

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text_json(t: &Text) -> Value {
    Value::from(t.as_str())
}

/// The vectors' JSON form of a decoded frame.
fn frame_to_json(frame: &Frame) -> Value {
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
            "auth": hex_encode(&f.auth),
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
fn frame_from_json(ctx: &str, value: &Value) -> Frame {
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
                auth: f.bytes("auth"),
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

/// The vectors' JSON form of a decoding error: every field of the variant.
fn error_to_json(error: &FrameError) -> Value {
    let mut v = Map::new();
    v.insert("kind".into(), error.kind().into());
    if let Some(t) = error.frame_type() {
        v.insert("frame_type".into(), t.name().into());
    }
    if let Some(field) = error.field() {
        v.insert("field".into(), field.into());
    }
    let numbers: Vec<(&str, u64)> = match *error {
        FrameError::EmptyMessage => vec![],
        FrameError::TruncatedHeader { available } => vec![("available", available as u64)],
        FrameError::UnsupportedVersion { version } => vec![("version", version.into())],
        FrameError::UnknownType { frame_type } => vec![("type_nibble", frame_type.into())],
        FrameError::ReservedFlags { flags, .. } | FrameError::InvalidFlags { flags, .. } => {
            vec![("flags", flags.into())]
        }
        FrameError::WrongSession { session_id, .. } => {
            vec![("session_id", session_id.get().into())]
        }
        FrameError::BadLength { len, min, max, .. } => {
            vec![
                ("len", len.into()),
                ("min", min.into()),
                ("max", max.into()),
            ]
        }
        FrameError::TruncatedPayload {
            declared,
            available,
            ..
        } => vec![
            ("declared", declared.into()),
            ("available", available as u64),
        ],
        FrameError::TruncatedField { .. } | FrameError::InvalidUtf8 { .. } => vec![],
        FrameError::TrailingBytes { extra, .. } => vec![("extra", extra as u64)],
        FrameError::InvalidValue { value, .. } => vec![("value", value)],
        FrameError::DuplicateSetting { id } => vec![("id", id.into())],
        ref other => panic!("FrameError variant without a vector form: {other:?}"),
    };
    for (key, n) in numbers {
        v.insert(key.into(), n.into());
    }
    v.insert("close_code".into(), error.close_code().get().into());
    Value::Object(v)
}

fn expected_frames(v: &Vector, key: &str) -> Vec<Value> {
    match v.value.get(key) {
        None => vec![],
        Some(Value::Array(list)) => list.clone(),
        Some(other) => panic!("{}: {key} is not an array: {other}", v.ctx()),
    }
}

#[derive(Default)]
struct Coverage {
    vectors: usize,
    valid: usize,
    errors: usize,
    kinds: BTreeMap<String, usize>,
    types: BTreeMap<&'static str, usize>,
}

fn check(v: &Vector, cov: &mut Coverage) {
    let ctx = v.ctx();
    const KEYS: [&str; 7] = [
        "name",
        "description",
        "hex",
        "frames",
        "error",
        "frames_before_error",
        "canonical",
    ];
    for key in v.value.keys() {
        assert!(KEYS.contains(&key.as_str()), "{ctx}: unknown key {key:?}");
    }
    assert!(
        v.value
            .get("description")
            .and_then(Value::as_str)
            .is_some_and(|d| !d.is_empty()),
        "{ctx}: missing description"
    );
    let hex = v
        .value
        .get("hex")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{ctx}: missing hex"));
    let wire = Bytes::from(hex_decode(hex).unwrap_or_else(|e| panic!("{ctx}: hex: {e}")));

    let mut decoded = Vec::new();
    let mut error = None;
    for item in mux_proto::frame::Frames::new(wire.clone()) {
        match item {
            Ok(frame) => {
                assert!(error.is_none(), "{ctx}: a frame was yielded after an error");
                decoded.push(frame);
            }
            Err(e) => {
                assert!(error.is_none(), "{ctx}: two errors were yielded");
                error = Some(e);
            }
        }
    }
    for frame in &decoded {
        *cov.types.entry(frame.frame_type().name()).or_default() += 1;
    }

    let expected_error = v.value.get("error");
    let frames_key = if expected_error.is_some() {
        assert!(
            !v.value.contains_key("frames"),
            "{ctx}: has both frames and error"
        );
        assert!(
            !v.value.contains_key("canonical"),
            "{ctx}: canonical applies to valid vectors only"
        );
        "frames_before_error"
    } else {
        assert!(
            !v.value.contains_key("frames_before_error"),
            "{ctx}: frames_before_error without error"
        );
        assert!(
            v.value.contains_key("frames"),
            "{ctx}: has neither frames nor error"
        );
        "frames"
    };
    let expected = expected_frames(v, frames_key);
    let actual: Vec<Value> = decoded.iter().map(frame_to_json).collect();
    assert_eq!(
        actual, expected,
        "{ctx}: decoded frames differ (error: {error:?})"
    );

    // The JSON, read on its own, describes exactly the decoded frames.
    let built: Vec<Frame> = expected
        .iter()
        .enumerate()
        .map(|(i, f)| frame_from_json(&format!("{ctx}: {frames_key}[{i}]"), f))
        .collect();
    assert_eq!(built, decoded, "{ctx}: frames built from JSON differ");

    match (expected_error, error) {
        (Some(expected), Some(actual)) => {
            assert_eq!(
                error_to_json(&actual),
                *expected,
                "{ctx}: error differs ({actual})"
            );
            let kind = actual.kind().to_owned();
            *cov.kinds.entry(kind).or_default() += 1;
            cov.errors += 1;
        }
        (Some(expected), None) => panic!("{ctx}: expected error {expected}, decoded fine"),
        (None, Some(actual)) => panic!("{ctx}: unexpected error {actual:?}"),
        (None, None) => {
            assert!(!decoded.is_empty(), "{ctx}: a valid vector has frames");
            let canonical = match v.value.get("canonical") {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(other) => panic!("{ctx}: canonical is not a bool: {other}"),
            };
            let reencoded: BytesMut = encode_message(&built);
            if canonical {
                assert_eq!(
                    hex_encode(&reencoded),
                    hex,
                    "{ctx}: canonical vector does not re-encode to its bytes"
                );
            } else {
                assert_ne!(
                    hex_encode(&reencoded),
                    hex,
                    "{ctx}: marked non-canonical but re-encodes to its bytes"
                );
                // Whatever a non-canonical message means, its canonical form means the same.
                let again = mux_proto::frame::decode_message(reencoded.freeze())
                    .unwrap_or_else(|e| panic!("{ctx}: canonical form does not decode: {e}"));
                assert_eq!(again, decoded, "{ctx}: canonical form decodes differently");
            }
            cov.valid += 1;
        }
    }
    cov.vectors += 1;
}

#[test]
fn vectors_decode_as_specified() {
    let vectors = load_vectors();
    let mut names = BTreeSet::new();
    for v in &vectors {
        assert!(names.insert(v.name.clone()), "duplicate name {}", v.ctx());
    }

    let mut cov = Coverage::default();
    for v in &vectors {
        check(v, &mut cov);
    }

    assert!(
        cov.vectors >= MIN_VECTORS,
        "only {} vectors, expected at least {MIN_VECTORS}",
        cov.vectors
    );
    for kind in ERROR_KINDS {
        assert!(
            cov.kinds.contains_key(kind),
            "no vector produces FrameError::{kind}"
        );
    }
    for t in FrameType::ALL {
        assert!(
            cov.types.contains_key(t.name()),
            "no vector decodes a {} frame",
            t.name()
        );
    }
    for kind in cov.kinds.keys() {
        assert!(
            ERROR_KINDS.contains(&kind.as_str()),
            "ERROR_KINDS misses {kind}"
        );
    }
    println!(
        "{} vectors ({} valid, {} errors)",
        cov.vectors, cov.valid, cov.errors
    );
}

#[test]
fn hex_decoder_is_strict() {
    assert_eq!(hex_decode("00ff10").unwrap(), vec![0x00, 0xff, 0x10]);
    assert!(hex_decode("0").is_err());
    assert!(hex_decode("0G").is_err());
    assert!(hex_decode("FF").is_err());
    assert_eq!(hex_encode(&[0xab, 0x01]), "ab01");
}

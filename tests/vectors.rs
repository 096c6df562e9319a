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
use mux_proto::frame::{encode_message, Frame, FrameError, FrameType};
use serde_json::{Map, Value};

mod json;
use json::{frame_from_json, frame_to_json, hex_decode, hex_encode};

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

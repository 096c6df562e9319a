#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The topic vectors of spec/vectors/topics/ (the same files mux-js reads): every event
//! decodes as listed, every malformed one is refused, every kind parses to its topic and
//! position and prints back to itself.

use std::path::PathBuf;

use bytes::Bytes;
use mux_tokio::topic::{decode, Epoch, KindError, StreamPosition, TopicEvent, TopicKind};
use serde_json::{json, Value};

fn load(file: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../spec/vectors/topics")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn position(p: &StreamPosition) -> Value {
    json!({ "epoch": p.epoch.to_string(), "offset": p.offset.to_string() })
}

/// An event in the vectors' JSON form.
fn event_json(event: &TopicEvent) -> Value {
    match event {
        TopicEvent::Message { offset, payload } => {
            json!({ "type": "message", "offset": offset.to_string(), "payload": hex(payload) })
        }
        TopicEvent::Gap(missed) => {
            json!({ "type": "gap", "missed": missed.map(|n| n.to_string()) })
        }
        TopicEvent::Join(member) => json!({ "type": "join", "member": member }),
        TopicEvent::Leave(member) => json!({ "type": "leave", "member": member }),
        TopicEvent::Snapshot { members, truncated } => {
            json!({ "type": "snapshot", "truncated": truncated, "members": members })
        }
        TopicEvent::Position(p) => {
            let mut v = position(p);
            v["type"] = json!("position");
            v
        }
        TopicEvent::Unknown { tag } => json!({ "type": "unknown", "tag": tag }),
        other => panic!("no vector form for {other:?}"),
    }
}

#[test]
fn topic_events_decode_as_the_vectors_say() {
    let vectors = load("events.json");
    assert!(vectors.len() >= 20, "only {} event vectors", vectors.len());
    let mut kinds = std::collections::BTreeSet::new();
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        let bytes = Bytes::from(unhex(v["hex"].as_str().unwrap()));
        match (decode(&bytes), v.get("event")) {
            (Ok(event), Some(expected)) => {
                assert_eq!(&event_json(&event), expected, "{name}");
                kinds.insert(expected["type"].as_str().unwrap().to_owned());
            }
            (Err(_), None) => assert_eq!(v["error"], "malformed", "{name}"),
            (got, _) => panic!("{name}: decoded {got:?}, vector says {v}"),
        }
    }
    for kind in [
        "message", "gap", "join", "leave", "snapshot", "position", "unknown",
    ] {
        assert!(kinds.contains(kind), "no vector for {kind}");
    }
}

#[test]
fn topic_kinds_parse_as_the_vectors_say() {
    for v in load("kinds.json") {
        let name = v["name"].as_str().unwrap();
        let kind = v["kind"].as_str().unwrap();
        assert_eq!(hex(kind.as_bytes()), v["kind_hex"], "{name}");
        match TopicKind::parse(kind) {
            Ok(parsed) => {
                assert_eq!(parsed.topic, v["topic"], "{name}");
                let resume = parsed.resume.as_ref().map(position);
                assert_eq!(resume.unwrap_or(Value::Null), v["resume"], "{name}");
                assert_eq!(parsed.to_string(), kind, "{name}: prints back");
            }
            Err(e) => {
                assert_eq!(e, KindError::InvalidPosition, "{name}");
                assert_eq!(v["error"], "InvalidPosition", "{name}");
            }
        }
    }
    // The epochs of the vectors are 16 lowercase hex digits, as Display writes them.
    assert_eq!(
        Epoch::parse("00000000c0ffee00").unwrap().to_string(),
        "00000000c0ffee00"
    );
}

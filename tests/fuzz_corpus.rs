//! Replays every file of the committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same bodies the cargo-fuzz targets run (`mux_proto::fuzzing`, `mux_tokio::fuzzing`), on
//! the stable toolchain, so `cargo test --workspace` keeps every input the fuzzers found
//! interesting, and every crash they found, passing. An empty or missing corpus fails.
//!
//! The named tests at the end are regressions for crashes found by fuzzing (FUZZING.md).

use std::path::PathBuf;

/// Every corpus file of `target`, sorted; panics if there is none.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("readable corpus directory").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, data)
        })
        .collect()
}

fn replay(target: &str, body: fn(&[u8])) {
    let files = corpus(target);
    for (path, data) in &files {
        let outcome = std::panic::catch_unwind(|| body(data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
    }
    eprintln!("{target}: {} corpus files replayed", files.len());
}

#[test]
fn decode_bytes_corpus() {
    replay("decode_bytes", mux_proto::fuzzing::decode_bytes);
}

#[test]
fn round_trip_corpus() {
    replay("round_trip", mux_proto::fuzzing::round_trip);
}

#[test]
fn batching_corpus() {
    replay("batching", mux_proto::fuzzing::batching);
}

#[test]
fn connection_corpus() {
    replay("connection", mux_proto::fuzzing::connection);
}

#[test]
fn handshake_headers_corpus() {
    replay("handshake_headers", mux_tokio::fuzzing::handshake_headers);
}

#[test]
fn upgrade_head_corpus() {
    replay("upgrade_head", mux_tokio::fuzzing::upgrade_head);
}

/// Every vector of spec/vectors through the decode_bytes body (cmin keeps only the vectors
/// that add coverage to the corpus; this keeps them all).
#[test]
fn decode_bytes_every_vector() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("spec/vectors")).expect("spec/vectors") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("vector file");
        let json: serde_json::Value = serde_json::from_str(&text).expect("vector JSON");
        for vector in json["vectors"].as_array().expect("vectors") {
            let hex = vector["hex"].as_str().expect("hex");
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
                .collect();
            mux_proto::fuzzing::decode_bytes(&bytes);
            checked += 1;
        }
    }
    assert!(checked >= 80, "only {checked} vectors");
}

// ---- regressions for crashes found by fuzzing ------------------------------------------

use mux_proto::testing::Pair;
use mux_proto::{CloseCode, Event, Initiator};

/// Replays one named regression input of `target` (kept in the corpus as `regress-*`).
fn regression(target: &str, name: &str, body: fn(&[u8])) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
        .join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    body(&data);
}

/// connection: `Connection::close` and `go_away` put the application's code on the wire
/// unchecked, so `close(CloseCode(0))` sent a CONN_CLOSE the peer must reject with 1002
/// (spec/close-codes.md#valid-values). Invalid codes are now replaced: 1011 for CONN_CLOSE,
/// 1001 for GOAWAY.
#[test]
fn close_and_go_away_never_send_an_invalid_code() {
    regression(
        "connection",
        "regress-close-invalid-code",
        mux_proto::fuzzing::connection,
    );
    for code in [
        CloseCode(0),
        CloseCode(1005),
        CloseCode(1006),
        CloseCode(5000),
    ] {
        // A live session keeps the shutdown from completing at once.
        let mut pair = Pair::connected();
        pair.open_accepted("chat", mux_proto::Grant::full());
        pair.client.conn.go_away(pair.now, code, "going");
        pair.drive();
        let goaway = pair
            .server
            .take_event(|e| matches!(e, Event::GoAway { .. }));
        assert!(
            matches!(
                goaway,
                Some(Event::GoAway {
                    code: CloseCode::GOING_AWAY,
                    ..
                })
            ),
            "{code:?}: {goaway:?}"
        );
        assert!(pair.server.conn.is_open(), "{code:?}");

        let mut pair = Pair::connected();
        pair.server.conn.close(pair.now, code, "closing");
        pair.drive();
        assert_eq!(
            pair.server.take_conn_closed(),
            Some((CloseCode::INTERNAL_ERROR, Initiator::Local))
        );
        assert_eq!(
            pair.client.take_conn_closed(),
            Some((CloseCode::INTERNAL_ERROR, Initiator::Peer)),
            "{code:?}"
        );
    }
}

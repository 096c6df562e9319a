#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Liveness over loopback: a silent peer is closed by keepalive, a peer that stops reading is
//! dropped after the write deadline, and neither disturbs a healthy connection.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{bind, encode, open_config, raw_upgrade, wait_until, within, RawPeer, MUX};
use mux_proto::frame::{decode_message, Frame, Open, OpenRequest, Text};
use mux_proto::{CloseCode, SessionId};
use mux_tokio::{AllowAll, Client, ClientConfig, SendError, ServerConfig, ServerHandle};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(200);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(200);
const WRITE_TIMEOUT: Duration = Duration::from_millis(300);

/// Sessions of kind `flood` are sent 16 KiB messages until sending fails (the outcome goes
/// to the returned channel); every other session echoes.
async fn server(
    config: ServerConfig,
) -> (String, ServerHandle, mpsc::Receiver<(usize, SendError)>) {
    let (mut server, url) = bind(config, AllowAll, AllowAll).await;
    let handle = server.handle();
    let (floods_tx, floods) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(mut session) = server.accept().await {
            if session.kind() == "flood" {
                let floods_tx = floods_tx.clone();
                tokio::spawn(async move {
                    let chunk = Bytes::from(vec![0x5a; 16 * 1024]);
                    let mut sent = 0usize;
                    let error = loop {
                        match session.send(chunk.clone()).await {
                            Ok(()) => sent += 1,
                            Err(e) => break e,
                        }
                    };
                    let _ = floods_tx.send((sent, error)).await;
                });
            } else {
                tokio::spawn(common::echo(session));
            }
        }
    });
    (url, handle, floods)
}

async fn healthy_client(url: &str) -> (Client, mux_tokio::Session) {
    let mut client = within(
        "connect",
        Client::connect(url, ClientConfig::default().reconnect(false)),
    )
    .await
    .expect("connect");
    let session = within("open", client.open("echo", Bytes::new()))
        .await
        .expect("open");
    (client, session)
}

async fn round_trip(session: &mut mux_tokio::Session, i: usize) -> Duration {
    let started = Instant::now();
    let m = Bytes::from(format!("healthy-{i}"));
    within("healthy send", session.send(m.clone()))
        .await
        .expect("send");
    assert_eq!(within("healthy echo", session.recv()).await, Some(m));
    started.elapsed()
}

#[tokio::test]
async fn silent_peer_is_closed_by_keepalive() {
    let mut protocol = mux_proto::Config::default();
    protocol.timeouts.keepalive_interval = Some(KEEPALIVE_INTERVAL);
    protocol.timeouts.keepalive_timeout = KEEPALIVE_TIMEOUT;
    let (url, handle, _) = server(open_config().protocol(protocol)).await;
    // A healthy client answers the server's PINGs through its driver and stays.
    let (_client, mut healthy) = healthy_client(&url).await;

    // The zombie completes the upgrade, sends SETTINGS, then never sends or reads again.
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .expect("addr");
    let mut zombie = raw_upgrade(addr, &[MUX]).await;
    assert_eq!(zombie.status, 101, "{}", zombie.head);
    let settings = common::ws_binary_frame(&encode(&[common::default_settings()]));
    zombie
        .stream
        .write_all(&settings)
        .await
        .expect("write SETTINGS");
    let silent_since = Instant::now();
    assert_eq!(handle.stats().connections, 2);

    wait_until("the zombie is disconnected", || {
        handle.stats().connections == 1
    })
    .await;
    let elapsed = silent_since.elapsed();
    let deadline = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT;
    assert!(
        elapsed >= deadline - Duration::from_millis(50),
        "closed after {elapsed:?}, before the keepalive deadline"
    );
    assert!(
        elapsed <= deadline + Duration::from_millis(400),
        "closed only after {elapsed:?}"
    );

    // What the server sent, read only now: SETTINGS, a PING, then CONN_CLOSE 4006 and a
    // WebSocket Close with the same code.
    let rest = std::mem::take(&mut zombie.rest);
    let bytes = common::read_to_end(&mut zombie.stream, rest).await;
    let frames = common::ws_frames(&bytes);
    let mux: Vec<Frame> = frames
        .iter()
        .filter(|(op, _)| *op == 0x2)
        .flat_map(|(_, p)| decode_message(Bytes::copy_from_slice(p)).expect("valid frames"))
        .collect();
    assert!(matches!(mux.first(), Some(Frame::Settings(_))), "{mux:?}");
    assert!(mux.iter().any(|f| matches!(f, Frame::Ping(_))), "{mux:?}");
    assert!(
        matches!(mux.last(), Some(Frame::ConnClose(c)) if c.code == CloseCode::TIMEOUT),
        "{mux:?}"
    );
    let close = frames
        .iter()
        .find(|(op, _)| *op == 0x8)
        .expect("a WebSocket Close frame");
    assert_eq!(u16::from_be_bytes([close.1[0], close.1[1]]), 4006);

    // The healthy connection was pinged too, answered, and is still there.
    assert_eq!(handle.stats().connections, 1);
    round_trip(&mut healthy, 0).await;
}

#[tokio::test]
async fn peer_that_stops_reading_is_dropped_after_the_write_deadline() {
    let config = open_config().write_timeout(WRITE_TIMEOUT);
    let (url, handle, mut floods) = server(config).await;
    let (_client, mut healthy) = healthy_client(&url).await;
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .expect("addr");

    // The slow peer grants a huge window, asks for the flood, and never reads again.
    let mut slow = RawPeer::connect(addr, common::generous_settings()).await;
    slow.send(&[Frame::Open(Open {
        session_id: SessionId(1),
        request: OpenRequest::default(),
        kind: Text::from_static("flood"),
        auth: mux_proto::Credential::EMPTY,
    })])
    .await;
    let flooding_since = Instant::now();
    assert_eq!(handle.stats().connections, 2);

    // The healthy connection keeps echoing while the server's writes to the slow peer stall.
    let mut worst = Duration::ZERO;
    let mut i = 0;
    within("the slow peer to be dropped", async {
        while handle.stats().connections == 2 {
            worst = worst.max(round_trip(&mut healthy, i).await);
            i += 1;
        }
    })
    .await;
    let elapsed = flooding_since.elapsed();
    assert!(
        elapsed >= WRITE_TIMEOUT,
        "dropped after {elapsed:?}, before the write deadline"
    );
    // That the deadline fires at its instant is checked on the paused clock
    // (tests/paused_clock.rs); the healthy connection's latency is P8's (BENCHMARKS.md).
    assert!(
        i > 0 && worst > Duration::ZERO,
        "the healthy connection echoed meanwhile"
    );

    // The flooding session learns its connection is gone.
    let (sent, error) = within("the flood to end", floods.recv())
        .await
        .expect("flood outcome");
    assert!(sent > 16, "only {sent} messages went out before the stall");
    assert!(matches!(error, SendError::Closed(_)), "{error:?}");
    assert_eq!(handle.stats().connections, 1);
    for j in 0..5 {
        round_trip(&mut healthy, i + j).await;
    }
    drop(slow);
}

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Isolation under concurrency over loopback: many clients, many sessions each, random-length
//! payloads tagged with (client, session, seq); every message comes back on its own session,
//! in order, exactly once, and the server sees each session's messages in order too.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{bind, open_config, XorShift};
use mux_tokio::{AllowAll, Client, ClientConfig, Session};
use tokio::task::JoinSet;

const CLIENTS: u16 = 50;
const SESSIONS: u16 = 20;
const MESSAGES: u32 = 8;
const HEADER: usize = 2 + 2 + 4 + 8;

/// `client | session | seq | checksum of the filler`, then the filler.
fn message(client: u16, session: u16, seq: u32, rng: &mut XorShift) -> Bytes {
    let len = rng.range(0, 3000);
    let filler = common::filler(rng.next(), len);
    let mut out = BytesMut::with_capacity(HEADER + len);
    out.put_u16(client);
    out.put_u16(session);
    out.put_u32(seq);
    out.put_u64(checksum(&filler));
    out.extend_from_slice(&filler);
    out.freeze()
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// (client, session, seq), after checking the filler is intact.
fn parse(m: &[u8]) -> (u16, u16, u32) {
    assert!(m.len() >= HEADER, "short message: {} bytes", m.len());
    let client = u16::from_be_bytes([m[0], m[1]]);
    let session = u16::from_be_bytes([m[2], m[3]]);
    let seq = u32::from_be_bytes([m[4], m[5], m[6], m[7]]);
    let sum = u64::from_be_bytes(m[8..16].try_into().expect("8 bytes"));
    assert_eq!(checksum(&m[HEADER..]), sum, "corrupted payload");
    (client, session, seq)
}

/// Echoes, asserting that the session carries one (client, session) tag, in sequence.
async fn checked_echo(mut session: Session, checked: Arc<AtomicU64>) {
    let mut tag = None;
    let mut next_seq = 0u32;
    while let Some(m) = session.recv().await {
        let (client, s, seq) = parse(&m);
        match tag {
            None => {
                assert_eq!(session.kind(), format!("c{client}-s{s}"));
                tag = Some((client, s));
            }
            Some(t) => assert_eq!(t, (client, s), "a message crossed into another session"),
        }
        assert_eq!(seq, next_seq, "server saw {client}/{s} out of order");
        next_seq += 1;
        checked.fetch_add(1, Ordering::Relaxed);
        if session.send(m).await.is_err() {
            break;
        }
    }
}

async fn run_session(mut session: Session, client: u16, s: u16) {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (u64::from(client) << 20 | u64::from(s)));
    // Everything goes out first (well within the initial credit), then comes back.
    let mut sent = Vec::new();
    for seq in 0..MESSAGES {
        let m = message(client, s, seq, &mut rng);
        session.send(m.clone()).await.expect("send");
        sent.push(m);
    }
    for (seq, expected) in sent.iter().enumerate() {
        let got = session.recv().await.expect("echo");
        let (c, got_s, got_seq) = parse(&got);
        assert_eq!((c, got_s), (client, s), "reply on the wrong session");
        assert_eq!(got_seq as usize, seq, "reply out of order");
        assert_eq!(&got, expected);
    }
    // Exactly once: nothing else arrives on the session.
    session.finish().await;
    assert_eq!(
        session.recv().await,
        None,
        "an extra message on {client}/{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_isolated_under_concurrency() {
    let config = open_config().connection_limits(1000, 1000, 1000);
    let (mut server, url) = bind(config, AllowAll, AllowAll).await;
    let handle = server.handle();
    let checked = Arc::new(AtomicU64::new(0));
    let server_checked = checked.clone();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(checked_echo(session, server_checked.clone()));
        }
    });

    let work = async {
        let mut clients = JoinSet::new();
        for c in 0..CLIENTS {
            let url = url.clone();
            clients.spawn(async move {
                let config = ClientConfig::default().reconnect(false);
                let mut client = Client::connect(&url, config).await.expect("connect");
                let mut sessions = JoinSet::new();
                for s in 0..SESSIONS {
                    let session = client
                        .open(&format!("c{c}-s{s}"), Bytes::new())
                        .await
                        .expect("open");
                    sessions.spawn(run_session(session, c, s));
                }
                while let Some(done) = sessions.join_next().await {
                    done.expect("session task");
                }
                client.close().await;
            });
        }
        while let Some(done) = clients.join_next().await {
            done.expect("client task");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .expect("the isolation run took longer than 30 s");
    let total = u64::from(CLIENTS) * u64::from(SESSIONS) * u64::from(MESSAGES);
    assert_eq!(checked.load(Ordering::Relaxed), total);
    common::wait_idle(&handle).await;
    assert_eq!(handle.stats().upgraded, u64::from(CLIENTS));
}

/// One connection with as many sessions as the server allows, all sending and reading at
/// once: the handles' commands contend for the connection task's queue, and no session may
/// stall because a notification was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_busy_sessions_on_one_connection_all_complete() {
    const BUSY: u16 = 100;
    const ROUNDS: u32 = 40;
    let (url, handle, _) = common::echo_server(open_config()).await;
    let mut client = Client::connect(&url, ClientConfig::default().reconnect(false))
        .await
        .expect("connect");
    let mut sessions = Vec::new();
    for s in 0..BUSY {
        sessions.push(
            client
                .open(&format!("c0-s{s}"), Bytes::new())
                .await
                .expect("open"),
        );
    }
    let work = async {
        let mut tasks = JoinSet::new();
        for (s, mut session) in sessions.into_iter().enumerate() {
            tasks.spawn(async move {
                let s = s as u16;
                let mut rng = XorShift(0x2545_f491_4f6c_dd1d ^ u64::from(s));
                let mut sent = Vec::new();
                for seq in 0..ROUNDS {
                    let m = message(0, s, seq, &mut rng);
                    session.send(m.clone()).await.expect("send");
                    sent.push(m);
                }
                for expected in &sent {
                    assert_eq!(session.recv().await.as_ref(), Some(expected));
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("session task");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .expect("a session stalled");
    client.close().await;
    common::wait_idle(&handle).await;
}

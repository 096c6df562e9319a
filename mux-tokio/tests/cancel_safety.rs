#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Cancel safety of `send`, `recv`, `open` and `closed`. A `send` future either queued its message in the poll that
//! returned `Ok`, or did not queue it at all, and a dropped future never delivers it later.
//! Each test polls the future with a no-op waker, drops it, and checks what the peer
//! receives around it. (The tests run on tokio's current-thread runtime, so the connection
//! driver cannot run between that poll and the drop.)

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::{bind, open_config, within};
use futures_util::task::noop_waker_ref;
use mux_tokio::{AllowAll, Client, ClientConfig, Session};
use tokio::sync::mpsc;

const MARKER: &[u8] = b"marker";

fn numbered(i: u32) -> Bytes {
    Bytes::from(i.to_be_bytes().to_vec())
}

/// Polls `future` once without a real waker; true if it is still pending.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> bool {
    let mut cx = Context::from_waker(noop_waker_ref());
    future.poll(&mut cx).is_pending()
}

/// A server that hands every session to the test unread.
async fn sink_server(config: mux_tokio::ServerConfig) -> (String, mpsc::Receiver<Session>) {
    let (mut server, url) = bind(config, AllowAll, AllowAll).await;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            let _ = tx.send(session).await;
        }
    });
    (url, rx)
}

/// A client with one `sink` session, and the server's side of it. The client is returned
/// so its connection lives as long as the test needs it.
async fn one_session() -> (Client, Session, Session) {
    let (url, mut sessions) = sink_server(open_config()).await;
    let mut client = Client::connect(&url, ClientConfig::default().reconnect(false))
        .await
        .unwrap();
    let session = client.open("sink", Bytes::new()).await.unwrap();
    let server_side = within("the server's session", sessions.recv())
        .await
        .unwrap();
    (client, session, server_side)
}

/// Reads until the marker; returns everything before it.
async fn read_to_marker(session: &mut Session) -> Vec<Bytes> {
    let mut got = Vec::new();
    loop {
        let m = session.recv().await.expect("the session stays open");
        if m.as_ref() == MARKER {
            return got;
        }
        got.push(m);
    }
}

#[tokio::test]
async fn a_send_that_completed_in_its_first_poll_is_delivered_once() {
    let (_client, mut session, mut server_side) = one_session().await;
    session.send(numbered(0)).await.unwrap();
    {
        // With credit, the message is queued in the first poll: no later step can lose or
        // repeat it.
        let send = pin!(session.send(numbered(1)));
        assert!(
            !poll_once(send),
            "a send with credit completes in its first poll"
        );
    }
    session.send(Bytes::from_static(MARKER)).await.unwrap();
    let got = within("the marker", read_to_marker(&mut server_side)).await;
    assert_eq!(got, vec![numbered(0), numbered(1)]);
}

#[tokio::test]
async fn a_send_dropped_while_waiting_for_credit_is_never_sent() {
    const QUEUED: u32 = 2;
    let mut server_protocol = mux_proto::Config::default();
    server_protocol.limits.initial_credit_messages = 2;
    let config = open_config().protocol(server_protocol);
    let (url, mut sessions) = sink_server(config).await;
    let mut client_protocol = mux_proto::Config::default();
    client_protocol.limits.max_queued_messages = QUEUED;
    let client_config = ClientConfig::default()
        .protocol(client_protocol)
        .reconnect(false);
    let mut client = Client::connect(&url, client_config).await.unwrap();
    let session = client.open("sink", Bytes::new()).await.unwrap();
    let sender = session.sender();
    let mut server_side = within("the server's session", sessions.recv())
        .await
        .unwrap();

    // Fill the peer's credit and our queue: sends complete until one waits for room.
    let mut sent = Vec::new();
    let mut dropped = None;
    for i in 0..64 {
        let mut send = pin!(sender.send(numbered(i)));
        let blocked = within("credit runs out", async {
            loop {
                let polled = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
                if let Poll::Ready(result) = polled {
                    result.unwrap();
                    return false;
                }
                let stats = session.stats().await.unwrap();
                if stats.send_credit.0 == 0 && stats.send_queued_messages >= QUEUED {
                    // Polled once more after the check, then dropped with no task in
                    // between: if this poll is pending, the message was not taken.
                    return poll_once(send.as_mut());
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        if blocked {
            dropped = Some(i);
            break;
        }
        sent.push(numbered(i));
    }
    let dropped = dropped.expect("a send waited for credit");
    assert!(!sent.is_empty());

    // Now read everything: the dropped message must not follow the ones sent before it.
    let marker = tokio::spawn(async move { sender.send(Bytes::from_static(MARKER)).await });
    let got = within("the marker", read_to_marker(&mut server_side)).await;
    within("the marker's send", marker).await.unwrap().unwrap();
    assert_eq!(
        got, sent,
        "message {dropped} was dropped before it was sent"
    );
}

/// `recv` is cancel-safe: a `recv` dropped while waiting took nothing, so the message that
/// arrives afterwards is read once, in order, by the next `recv`.
#[tokio::test]
async fn a_recv_dropped_while_waiting_takes_no_message() {
    let (_client, mut session, mut server_side) = one_session().await;
    {
        let recv = pin!(session.recv());
        assert!(poll_once(recv), "nothing has been sent yet");
    }
    server_side.send(numbered(0)).await.unwrap();
    server_side.send(numbered(1)).await.unwrap();
    assert_eq!(within("first", session.recv()).await, Some(numbered(0)));
    assert_eq!(within("second", session.recv()).await, Some(numbered(1)));
}

/// An `open` dropped before the server's answer leaves no session behind on either side:
/// the client cancels it, and the connection goes on opening sessions.
#[tokio::test]
async fn an_open_dropped_before_its_answer_leaves_no_session() {
    let (url, mut sessions) = sink_server(open_config()).await;
    let mut client = Client::connect(&url, ClientConfig::default().reconnect(false))
        .await
        .unwrap();
    let handle = client.connection().await.expect("connected");
    {
        let open = pin!(handle.open("sink", Bytes::new()));
        assert!(poll_once(open), "an open waits for the server's answer");
    }
    let mut kept = within("a later open", handle.open("sink", Bytes::new()))
        .await
        .unwrap();
    // The server may have seen the cancelled open; if so it ended at once with 4010.
    let mut first = within("the server's session", sessions.recv())
        .await
        .unwrap();
    if first.id() != kept.id() {
        assert_eq!(
            within("the cancelled session ends", first.recv()).await,
            None
        );
        assert_eq!(
            first.close_reason().map(|r| r.code),
            Some(mux_proto::CloseCode::CANCELLED)
        );
        first = within("the kept session", sessions.recv()).await.unwrap();
    }
    assert_eq!(first.id(), kept.id());
    first.send(numbered(7)).await.unwrap();
    assert_eq!(
        within("the kept session works", kept.recv()).await,
        Some(numbered(7))
    );
    let stats = within("stats", handle.stats()).await.unwrap();
    assert_eq!(
        stats.sessions_live, 1,
        "only the kept session is live on the client"
    );
}

/// `closed` only observes: dropping it changes nothing, and a later `closed` still
/// completes when the session ends.
#[tokio::test]
async fn a_dropped_closed_future_does_not_end_or_hide_the_end() {
    let (_client, session, server_side) = one_session().await;
    {
        let closed = pin!(session.closed());
        assert!(poll_once(closed), "the session is open");
    }
    assert!(session.close_reason().is_none());
    server_side
        .sender()
        .reset(mux_proto::CloseCode::REVOKED, "gone")
        .await;
    within("closed completes", session.closed()).await;
    assert_eq!(
        session.close_reason().map(|r| r.code),
        Some(mux_proto::CloseCode::REVOKED)
    );
}

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Graceful shutdown over loopback: GOAWAY stops new sessions, live ones finish (or are cut
//! at the grace deadline), connections close with 1001, `shutdown` returns and
//! `Server::accept` ends.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{bind, open_config, within};
use mux_proto::CloseCode;
use mux_tokio::{AllowAll, Client, ClientConfig, ClientEvent, OpenError, ServerHandle, Session};
use tokio::task::JoinHandle;

/// An echo server whose accept loop ends (the task completes) when `accept` returns `None`.
async fn server() -> (String, ServerHandle, JoinHandle<usize>) {
    let (mut server, url) = bind(open_config(), AllowAll, AllowAll).await;
    let handle = server.handle();
    let accepting = tokio::spawn(async move {
        let mut accepted = 0;
        while let Some(session) = server.accept().await {
            accepted += 1;
            tokio::spawn(common::echo(session));
        }
        accepted
    });
    (url, handle, accepting)
}

async fn connect(url: &str) -> Client {
    let mut client = within(
        "connect",
        Client::connect(url, ClientConfig::default().reconnect(false)),
    )
    .await
    .expect("connect");
    assert_eq!(
        within("Connected", client.next_event()).await,
        Some(ClientEvent::Connected {
            attempt: 0,
            generation: 1
        })
    );
    client
}

async fn echo_once(session: &mut Session, text: &str) {
    within("an echo", async {
        session
            .send(Bytes::copy_from_slice(text.as_bytes()))
            .await
            .expect("send");
        assert_eq!(session.recv().await.as_deref(), Some(text.as_bytes()));
    })
    .await;
}

/// Opens until the client is refused: the GOAWAY has reached it. Sessions that were still
/// accepted before it arrived are dropped (reset) at once.
async fn open_until_refused(client: &mut Client) -> OpenError {
    within("opens to be refused after GOAWAY", async {
        loop {
            match client.open("late", Bytes::new()).await {
                Ok(session) => drop(session),
                Err(e) => return e,
            }
        }
    })
    .await
}

fn is_going_away(e: &OpenError) -> bool {
    matches!(e, OpenError::Local(mux_proto::OpenError::GoingAway))
        || matches!(e, OpenError::Refused { code, .. } if *code == CloseCode::REFUSED)
}

#[tokio::test]
async fn in_flight_sessions_finish_then_connections_close_with_1001() {
    let (url, handle, accepting) = server().await;
    let mut client = connect(&url).await;
    let mut live = within("open", client.open("echo", Bytes::new()))
        .await
        .expect("open");
    echo_once(&mut live, "before").await;

    // Far longer than `within`'s 5 s bound: a shutdown that returns at all returned because
    // every session finished, not because the grace ran out.
    let grace = Duration::from_secs(60);
    let shutdown = tokio::spawn({
        let handle = handle.clone();
        async move { handle.shutdown(grace).await }
    });

    // No new sessions on this connection...
    let refused = open_until_refused(&mut client).await;
    assert!(is_going_away(&refused), "{refused:?}");
    // ...but the one in flight keeps working until it is done.
    for i in 0..3 {
        echo_once(&mut live, &format!("during-{i}")).await;
    }
    assert!(
        !shutdown.is_finished(),
        "shutdown returned with a live session"
    );
    within("close", live.close(CloseCode::NORMAL, "done")).await;

    // The last session ended: the server closes the connection with 1001 at once.
    assert_eq!(
        within("Disconnected", client.next_event()).await,
        Some(ClientEvent::Disconnected {
            code: Some(CloseCode::GOING_AWAY)
        })
    );
    // Without reconnecting, the client is done: opening fails instead of waiting.
    assert_eq!(
        within("open after disconnect", client.open("echo", Bytes::new()))
            .await
            .err(),
        Some(OpenError::ConnectionClosed)
    );
    within("shutdown to return", shutdown)
        .await
        .expect("shutdown task");
    let stats = handle.stats();
    assert_eq!(stats.connections, 0);
    assert_eq!(handle.tracked_keys(), (0, 0));
    // accept() drains and then returns None.
    let accepted = within("accept() to return None", accepting)
        .await
        .expect("accept loop");
    assert!(accepted >= 1);
    // The listener is gone: nobody new gets in.
    let late = within(
        "a late connect",
        Client::connect(&url, ClientConfig::default().reconnect(false)),
    )
    .await;
    assert!(late.is_err(), "a client connected after shutdown");
}

#[tokio::test]
async fn sessions_that_do_not_finish_are_cut_at_the_grace_deadline() {
    let (url, handle, accepting) = server().await;
    let mut first = connect(&url).await;
    let mut second = connect(&url).await;
    let mut a = within("open", first.open("echo", Bytes::new()))
        .await
        .expect("open");
    let mut b = within("open", second.open("echo", Bytes::new()))
        .await
        .expect("open");
    echo_once(&mut a, "a").await;
    echo_once(&mut b, "b").await;

    let grace = Duration::from_millis(300);
    let started = Instant::now();
    within("shutdown", handle.shutdown(grace)).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= grace, "shutdown returned after {elapsed:?}");

    for (client, session) in [(&mut first, &mut a), (&mut second, &mut b)] {
        assert_eq!(
            within("Disconnected", client.next_event()).await,
            Some(ClientEvent::Disconnected {
                code: Some(CloseCode::GOING_AWAY)
            })
        );
        assert_eq!(within("session end", session.recv()).await, None);
        let reason = session.close_reason().expect("close reason");
        assert_eq!(reason.code, CloseCode::GOING_AWAY);
    }
    assert_eq!(handle.stats().connections, 0);
    assert_eq!(handle.tracked_keys(), (0, 0));
    within("accept() to return None", accepting)
        .await
        .expect("accept loop");
}

#[tokio::test]
async fn shutdown_without_connections_returns_at_once() {
    let (_, handle, accepting) = server().await;
    within("shutdown", handle.shutdown(Duration::from_secs(5))).await;
    assert_eq!(
        within("accept() to return None", accepting)
            .await
            .expect("accept loop"),
        0
    );
}

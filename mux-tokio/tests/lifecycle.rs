#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Dropping a `Client` or a `Server` releases what it started: its connection, its tasks,
//! its port. Each test waits on the state itself (the session ending, the port binding
//! again, the runtime's task count), never on a sleep.

mod common;

use bytes::Bytes;
use common::{bind, hostile::alive_tasks, open_config, wait_idle, within};
use mux_proto::CloseCode;
use mux_tokio::{AllowAll, Client, ClientConfig, Session};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A server that hands its sessions to the test.
async fn server() -> (mux_tokio::Server, String) {
    bind(open_config(), AllowAll, AllowAll).await
}

#[tokio::test]
async fn dropping_the_server_frees_its_port_and_closes_its_connections() {
    let (mut server, url) = server().await;
    let addr = server.local_addr();
    let mut client = Client::connect(&url, ClientConfig::default().reconnect(false))
        .await
        .unwrap();
    let mut session = client.open("s", Bytes::new()).await.unwrap();
    // The server's side of the session stays alive: the drop must end it anyway.
    let server_side = within("the server's session", server.accept())
        .await
        .unwrap();
    drop(server);
    assert_eq!(within("the session to end", session.recv()).await, None);
    let closed = session.close_reason().expect("a close reason");
    assert_eq!(closed.code, CloseCode::GOING_AWAY);
    within("the port to be free", async {
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return listener,
                // The accept loop drops its listener on its next turn.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    drop(server_side);
}

#[tokio::test]
async fn dropping_the_client_ends_its_connection_and_its_tasks() {
    let (mut server, url) = server().await;
    let handle = server.handle();
    let (sessions_tx, mut sessions) = mpsc::channel::<Session>(1);
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            let _ = sessions_tx.send(session).await;
        }
    });
    tokio::task::yield_now().await;
    let baseline = alive_tasks();
    let mut client = Client::connect(&url, ClientConfig::default())
        .await
        .unwrap();
    let _session = client.open("s", Bytes::new()).await.unwrap();
    let mut server_side = within("the server's session", sessions.recv())
        .await
        .unwrap();
    assert!(alive_tasks() > baseline);
    drop(client);
    assert_eq!(within("the session to end", server_side.recv()).await, None);
    assert_eq!(
        server_side.close_reason().map(|c| c.code),
        Some(CloseCode::NORMAL)
    );
    wait_idle(&handle).await;
    common::wait_until("the client's and the connection's tasks end", || {
        alive_tasks() == baseline
    })
    .await;
}

#[tokio::test]
async fn a_shutdown_grace_too_large_for_the_clock_is_no_deadline() {
    let (server, _url) = server().await;
    let handle = server.handle();
    // `now + Duration::MAX` overflows tokio's Instant; with no connection the shutdown
    // has nothing to wait for and returns.
    within(
        "shutdown",
        handle.shutdown(std::time::Duration::from_secs(u64::MAX)),
    )
    .await;
    drop(server);
}

/// A `SessionSender` outliving its `Session`: dropping the `Session` ends the session (4010
/// after what was sent), the sender learns it (`closed` resolves, `send` fails with the
/// reason) instead of queueing into a dead session, and once the last sender is dropped the
/// session is gone from the connection. A sender dropped first ends nothing.
#[tokio::test]
async fn session_senders_follow_their_session_and_leave_nothing_behind() {
    let (mut server, url) = bind(open_config(), AllowAll, AllowAll).await;
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(common::echo(session));
        }
    });
    let mut client = Client::connect(&url, ClientConfig::default().reconnect(false))
        .await
        .unwrap();
    let mut session = client.open("echo", Bytes::new()).await.unwrap();
    // A clone dropped while the session lives changes nothing.
    drop(session.sender());
    session
        .send(Bytes::from_static(b"still here"))
        .await
        .unwrap();
    assert_eq!(
        within("the echo", session.recv()).await.as_deref(),
        Some(&b"still here"[..])
    );
    let sender = session.sender();
    let second = sender.clone();
    sender
        .send(Bytes::from_static(b"from the sender"))
        .await
        .unwrap();
    assert_eq!(
        within("the echo", session.recv()).await.as_deref(),
        Some(&b"from the sender"[..])
    );
    drop(session);
    within("the sender learns the end", sender.closed()).await;
    assert_eq!(sender.close_reason().unwrap().code, CloseCode::CANCELLED);
    assert!(second.send(Bytes::from_static(b"too late")).await.is_err());
    drop((sender, second));
    let handle = client.connection().await.unwrap();
    common::wait_until("the session is gone from the connection", || {
        futures_util::FutureExt::now_or_never(handle.stats())
            .flatten()
            .is_some_and(|s| s.sessions_live == 0)
    })
    .await;
}

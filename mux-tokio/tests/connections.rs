#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The server's handles on a principal's connections: list them, revoke every session they
//! hold when the principal's rights change, close them when it is banned; other principals
//! are not touched.

mod common;

use bytes::Bytes;
use common::{bind, open_config, token_authenticator, wait_until, within};
use mux_tokio::{AllowAll, Client, ClientConfig, CloseCode, Session};

async fn echo_once(session: &mut Session) -> bool {
    if session.send(Bytes::from_static(b"hi")).await.is_err() {
        return false;
    }
    within("the echo", session.recv()).await.is_some()
}

#[tokio::test]
async fn a_principals_sessions_are_revoked_and_its_connections_closed_and_no_one_elses() {
    let (mut server, url) = bind(open_config(), token_authenticator, AllowAll).await;
    let handle = server.handle();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(common::echo(session));
        }
    });
    let connect = |token: &'static str| {
        let url = url.clone();
        async move {
            Client::connect(&url, ClientConfig::default().token(token).reconnect(false))
                .await
                .unwrap()
        }
    };
    let mut alice = [
        connect("principal:alice").await,
        connect("principal:alice").await,
    ];
    let mut bob = connect("principal:bob").await;
    let mut a0 = alice[0].open("x", Bytes::new()).await.unwrap();
    let mut a1 = alice[1].open("x", Bytes::new()).await.unwrap();
    let mut b = bob.open("x", Bytes::new()).await.unwrap();
    assert!(echo_once(&mut a0).await && echo_once(&mut a1).await && echo_once(&mut b).await);

    let of_alice = handle.connections_of("alice");
    assert_eq!(of_alice.len(), 2);
    assert_eq!(handle.connections_of("bob").len(), 1);
    let revoked: usize = of_alice
        .iter()
        .map(|c| c.revoke_sessions("rights changed"))
        .sum();
    assert_eq!(revoked, 2);
    for session in [&a0, &a1] {
        within("the revocation", session.closed()).await;
        assert_eq!(session.close_reason().unwrap().code, CloseCode::REVOKED);
    }
    // The connections stay up for new sessions; bob never noticed.
    let mut again = alice[0].open("x", Bytes::new()).await.unwrap();
    assert!(echo_once(&mut again).await);
    assert!(echo_once(&mut b).await);

    for c in &of_alice {
        c.close(CloseCode::POLICY_VIOLATION, "banned").await;
    }
    wait_until("alice's connections are gone", || {
        handle.connections_of("alice").is_empty()
    })
    .await;
    assert!(echo_once(&mut b).await);
    drop(alice);
}

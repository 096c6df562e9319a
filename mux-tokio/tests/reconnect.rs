#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! Reconnection over loopback: a dropped connection is reported, retried with jittered
//! exponential backoff under its ceiling, re-established as a new generation, and given up
//! after `max_attempts`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{open_config, within};
use mux_proto::CloseCode;
use mux_tokio::{
    AllowAll, Backoff, Client, ClientConfig, ClientEvent, OpenError, Server, ServerHandle,
};

const BASE: Duration = Duration::from_millis(10);
const MAX: Duration = Duration::from_millis(100);

async fn echo_server_on(addr: SocketAddr) -> (ServerHandle, SocketAddr) {
    let mut server = Server::bind(addr, open_config(), AllowAll, AllowAll)
        .await
        .expect("bind");
    let handle = server.handle();
    let addr = server.local_addr();
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(common::echo(session));
        }
    });
    (handle, addr)
}

async fn connect(addr: SocketAddr, max_attempts: Option<u32>) -> Client {
    let config = ClientConfig::default().backoff(Backoff::new(BASE, MAX, max_attempts));
    let mut client = within("connect", Client::connect(&format!("ws://{addr}/"), config))
        .await
        .expect("connect");
    assert_eq!(
        next(&mut client).await,
        ClientEvent::Connected {
            attempt: 0,
            generation: 1
        }
    );
    client
}

async fn next(client: &mut Client) -> ClientEvent {
    within("a client event", client.next_event())
        .await
        .expect("the event stream ended")
}

async fn echo_works(client: &mut Client, text: &str) {
    within("an echo on a new session", async {
        let mut session = client.open("echo", Bytes::new()).await.expect("open");
        session
            .send(Bytes::copy_from_slice(text.as_bytes()))
            .await
            .expect("send");
        assert_eq!(session.recv().await.as_deref(), Some(text.as_bytes()));
    })
    .await;
}

/// Reads `Reconnecting` events, checking each delay against its ceiling, until another
/// event comes; returns that event and the attempts seen.
async fn reconnecting(client: &mut Client, backoff: &Backoff) -> (ClientEvent, u32) {
    let mut expected = 1;
    loop {
        match next(client).await {
            ClientEvent::Reconnecting { attempt, delay } => {
                assert_eq!(attempt, expected, "attempts count up from 1");
                let ceiling = backoff.ceiling(attempt - 1);
                assert!(
                    delay <= ceiling,
                    "attempt {attempt}: {delay:?} > {ceiling:?}"
                );
                assert!(ceiling <= MAX);
                expected += 1;
            }
            other => return (other, expected - 1),
        }
    }
}

#[tokio::test]
async fn reconnects_after_the_server_closes_the_connection() {
    let (handle, addr) = echo_server_on(common::loopback()).await;
    let mut client = connect(addr, Some(20)).await;
    let mut old = within("open", client.open("echo", Bytes::new()))
        .await
        .expect("open");

    let connections = handle.connections();
    assert_eq!(connections.len(), 1);
    connections[0]
        .close(CloseCode::TRY_AGAIN_LATER, "kicked")
        .await;

    assert_eq!(
        next(&mut client).await,
        ClientEvent::Disconnected {
            code: Some(CloseCode::TRY_AGAIN_LATER)
        }
    );
    let backoff = Backoff::new(BASE, MAX, Some(20));
    let (event, attempts) = reconnecting(&mut client, &backoff).await;
    assert_eq!(attempts, 1, "the server was up: the first retry succeeds");
    assert_eq!(
        event,
        ClientEvent::Connected {
            attempt: 1,
            generation: 2
        }
    );
    // Sessions of the old connection ended with its code; new ones work.
    assert_eq!(within("old session end", old.recv()).await, None);
    assert_eq!(
        old.close_reason().map(|r| r.code),
        Some(CloseCode::TRY_AGAIN_LATER)
    );
    echo_works(&mut client, "after reconnect").await;
    common::wait_until("one live connection", || handle.stats().connections == 1).await;
}

#[tokio::test]
async fn reconnects_to_a_server_restarted_on_the_same_port() {
    let (first, addr) = echo_server_on(common::loopback()).await;
    let mut client = connect(addr, Some(20)).await;
    echo_works(&mut client, "first server").await;

    within("shutdown", first.shutdown(Duration::ZERO)).await;
    assert_eq!(
        next(&mut client).await,
        ClientEvent::Disconnected {
            code: Some(CloseCode::GOING_AWAY)
        }
    );
    // Wait for the first retry to fail (nothing listens), then bring a server back up on
    // the same port.
    let backoff = Backoff::new(BASE, MAX, Some(20));
    assert!(matches!(
        next(&mut client).await,
        ClientEvent::Reconnecting { attempt: 1, delay } if delay <= BASE
    ));
    let second = within("rebinding the port", async {
        loop {
            match Server::bind(addr, open_config(), AllowAll, AllowAll).await {
                Ok(server) => break server,
                // The old listener may take a moment to be dropped.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await;
    let second_handle = second.handle();
    tokio::spawn(async move {
        let mut server = second;
        while let Some(session) = server.accept().await {
            tokio::spawn(common::echo(session));
        }
    });

    // Further Reconnecting events (if the restart took a while) respect their ceilings.
    let mut attempt_seen = 1;
    let event = loop {
        match next(&mut client).await {
            ClientEvent::Reconnecting { attempt, delay } => {
                assert_eq!(attempt, attempt_seen + 1);
                assert!(delay <= backoff.ceiling(attempt - 1), "{delay:?}");
                attempt_seen = attempt;
            }
            other => break other,
        }
    };
    match event {
        ClientEvent::Connected {
            attempt,
            generation,
        } => {
            assert_eq!(generation, 2);
            assert_eq!(
                attempt, attempt_seen,
                "Connected names the attempt that succeeded"
            );
        }
        other => panic!("expected Connected, got {other:?}"),
    }
    echo_works(&mut client, "second server").await;
    assert_eq!(second_handle.stats().upgraded, 1);
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let (handle, addr) = echo_server_on(common::loopback()).await;
    let mut client = connect(addr, Some(3)).await;
    within("shutdown", handle.shutdown(Duration::ZERO)).await;
    assert_eq!(
        next(&mut client).await,
        ClientEvent::Disconnected {
            code: Some(CloseCode::GOING_AWAY)
        }
    );
    let backoff = Backoff::new(BASE, MAX, Some(3));
    let (event, attempts) = reconnecting(&mut client, &backoff).await;
    assert_eq!(attempts, 3);
    assert_eq!(event, ClientEvent::GaveUp);
    // The client has stopped: nothing more happens and opening fails instead of waiting.
    assert_eq!(
        within("the event stream to end", client.next_event()).await,
        None
    );
    assert_eq!(
        within("open after giving up", client.open("echo", Bytes::new()))
            .await
            .err(),
        Some(OpenError::ConnectionClosed)
    );
}

/// A fake server: it upgrades (selecting `mux.v1`), exchanges SETTINGS, then drops the
/// TCP connection without CONN_CLOSE or a WebSocket Close.
async fn upgrade_then_vanish(listener: &tokio::net::TcpListener) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Message;
    let (tcp, _) = listener.accept().await.expect("accept");
    #[allow(clippy::result_large_err)]
    let select = |_: &Request, mut response: Response| {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mux.v1"));
        Ok(response)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, select)
        .await
        .expect("upgrade");
    ws.send(Message::Binary(common::encode(&[
        common::default_settings(),
    ])))
    .await
    .expect("send SETTINGS");
    // The client's SETTINGS.
    let _ = ws.next().await;
    drop(ws);
}

#[tokio::test]
async fn a_connection_lost_without_a_close_frame_is_reported_and_retried() {
    let listener = tokio::net::TcpListener::bind(common::loopback())
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fake = tokio::spawn(async move {
        upgrade_then_vanish(&listener).await;
        listener
    });
    let mut client = connect(addr, Some(20)).await;
    let listener = within("the fake server", fake).await.expect("fake server");
    assert_eq!(
        next(&mut client).await,
        ClientEvent::Disconnected { code: None },
        "lost without a close code"
    );
    // It retries against the same (fake) server, which answers and vanishes again.
    let again = tokio::spawn(async move { upgrade_then_vanish(&listener).await });
    let backoff = Backoff::new(BASE, MAX, Some(20));
    let (event, _) = reconnecting(&mut client, &backoff).await;
    assert!(
        matches!(event, ClientEvent::Connected { generation: 2, .. }),
        "{event:?}"
    );
    within("the fake server", again).await.expect("fake server");
    assert_eq!(
        next(&mut client).await,
        ClientEvent::Disconnected { code: None }
    );
}

#[tokio::test]
async fn the_reopen_policy_opens_listed_sessions_again_after_a_reconnect() {
    let (handle, addr) = echo_server_on(common::loopback()).await;
    let config = ClientConfig::default()
        .backoff(Backoff::new(BASE, MAX, Some(20)))
        .reopen_on_reconnect("echo", Bytes::new());
    let mut client = within("connect", Client::connect(&format!("ws://{addr}/"), config))
        .await
        .expect("connect");
    assert_eq!(
        next(&mut client).await,
        ClientEvent::Connected {
            attempt: 0,
            generation: 1
        }
    );
    // The policy applies to reconnects: the first connection's sessions are the app's own.
    handle.connections()[0]
        .close(CloseCode::TRY_AGAIN_LATER, "kicked")
        .await;
    assert_eq!(
        next(&mut client).await,
        ClientEvent::Disconnected {
            code: Some(CloseCode::TRY_AGAIN_LATER)
        }
    );
    let backoff = Backoff::new(BASE, MAX, Some(20));
    let (event, _) = reconnecting(&mut client, &backoff).await;
    assert!(
        matches!(event, ClientEvent::Connected { generation: 2, .. }),
        "{event:?}"
    );
    assert_eq!(
        next(&mut client).await,
        ClientEvent::Reopened {
            kind: "echo".into(),
            outcome: Ok(())
        }
    );
    let mut session = within("the re-opened session", client.accept())
        .await
        .expect("a re-opened session");
    assert_eq!(session.kind(), "echo");
    session
        .send(Bytes::from_static(b"again"))
        .await
        .expect("send");
    assert_eq!(
        within("echo", session.recv()).await.as_deref(),
        Some(&b"again"[..])
    );
}

/// spec/http.md M-HTTP-2: a reconnect the server refuses with 401 is not retried with the
/// same request. The authenticator accepts once, then refuses: after the kick the client
/// tries exactly once more and gives up.
#[tokio::test]
async fn a_reconnect_refused_with_401_is_not_retried() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use mux_tokio::{AuthError, HandshakeRequest, Principal};

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let authenticate = move |_: &HandshakeRequest| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            Ok(Principal::new("once"))
        } else {
            Err(AuthError::Expired)
        }
    };
    let mut server = Server::bind(common::loopback(), open_config(), authenticate, AllowAll)
        .await
        .expect("bind");
    let handle = server.handle();
    let addr = server.local_addr();
    tokio::spawn(async move { while server.accept().await.is_some() {} });
    let mut client = connect(addr, Some(20)).await;
    handle.connections()[0]
        .close(CloseCode::TRY_AGAIN_LATER, "kicked")
        .await;
    assert!(matches!(
        next(&mut client).await,
        ClientEvent::Disconnected { .. }
    ));
    let backoff = Backoff::new(BASE, MAX, Some(20));
    let (event, attempts) = reconnecting(&mut client, &backoff).await;
    assert_eq!(event, ClientEvent::GaveUp, "a 401 ends the retries");
    assert_eq!(attempts, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "exactly one refused retry");
}

/// A fake server's refusal: it reads one request head and answers `status`, with
/// `Retry-After: retry_after` if given, and no upgrade.
async fn refuse(listener: &tokio::net::TcpListener, status: u16, retry_after: Option<u64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut tcp, _) = listener.accept().await.expect("accept");
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut chunk).await.expect("read the request");
        assert!(n > 0, "the client hung up mid-request");
        head.extend_from_slice(&chunk[..n]);
    }
    let retry = retry_after.map_or(String::new(), |s| format!("Retry-After: {s}\r\n"));
    let response = format!("HTTP/1.1 {status} Refused\r\n{retry}Content-Length: 0\r\n\r\n");
    tcp.write_all(response.as_bytes())
        .await
        .expect("write the refusal");
}

/// spec/http.md M-HTTP-6: a reconnect refused with 429 or 503 is retried, and not before the
/// server's `Retry-After`, which is well above this backoff's 100 ms ceiling.
#[tokio::test]
async fn a_reconnect_refused_with_429_or_503_waits_for_retry_after() {
    for status in [429, 503] {
        let listener = tokio::net::TcpListener::bind(common::loopback())
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fake = tokio::spawn(async move {
            upgrade_then_vanish(&listener).await;
            refuse(&listener, status, Some(1)).await;
            upgrade_then_vanish(&listener).await;
        });
        let mut client = connect(addr, Some(20)).await;
        assert_eq!(
            next(&mut client).await,
            ClientEvent::Disconnected { code: None }
        );
        assert!(
            matches!(next(&mut client).await, ClientEvent::Reconnecting { attempt: 1, delay } if delay <= MAX),
            "the first retry backs off as usual"
        );
        match next(&mut client).await {
            ClientEvent::Reconnecting { attempt: 2, delay } => assert!(
                delay >= Duration::from_secs(1),
                "HTTP {status}: retried after {delay:?}, before Retry-After"
            ),
            other => panic!("HTTP {status}: expected a retry, got {other:?}"),
        }
        assert!(matches!(
            next(&mut client).await,
            ClientEvent::Connected { generation: 2, .. }
        ));
        within("the fake server", fake).await.expect("fake server");
    }
}

/// spec/http.md M-HTTP-2: a reconnect refused with 400 or 403 is not retried with the same
/// request: the client gives up and its supervisor ends (the event stream closes).
#[tokio::test]
async fn a_reconnect_refused_with_400_or_403_is_not_retried() {
    for status in [400, 403] {
        let listener = tokio::net::TcpListener::bind(common::loopback())
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fake = tokio::spawn(async move {
            upgrade_then_vanish(&listener).await;
            refuse(&listener, status, None).await;
        });
        let mut client = connect(addr, Some(20)).await;
        assert_eq!(
            next(&mut client).await,
            ClientEvent::Disconnected { code: None }
        );
        let backoff = Backoff::new(BASE, MAX, Some(20));
        let (event, attempts) = reconnecting(&mut client, &backoff).await;
        assert_eq!(event, ClientEvent::GaveUp, "HTTP {status} ends the retries");
        assert_eq!(attempts, 1, "HTTP {status}: exactly one refused retry");
        assert_eq!(
            within("the event stream to end", client.next_event()).await,
            None,
            "HTTP {status}: nothing retries after giving up"
        );
        within("the fake server", fake).await.expect("fake server");
    }
}

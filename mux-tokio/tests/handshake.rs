#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
//! The checks before the 101, over real loopback sockets: every refusal answers with its
//! exact HTTP status, counts it, and leaves no state behind.

mod common;

use common::{bind, raw_upgrade, token_authenticator, wait_idle, within, MUX};
use mux_tokio::{
    AllowAll, AuthError, Client, ClientConfig, ConnectError, OriginPolicy, ServerConfig,
    ServerHandle, ServerStats,
};

const GOOD: (&str, &str) = ("Authorization", "Bearer good-token");

/// A server that allows exactly `https://example.com` and accepts only `good-token`.
async fn strict_server(allow_missing: bool) -> (std::net::SocketAddr, ServerHandle, String) {
    let origins = OriginPolicy::allow(["https://example.com"]).allow_missing(allow_missing);
    let config = ServerConfig::default().origins(origins);
    let (server, url) = bind(config, token_authenticator, AllowAll).await;
    let addr = server.local_addr();
    let handle = server.handle();
    // Keep the server (and its accept queue) alive for the whole test.
    tokio::spawn(async move {
        let mut server = server;
        while let Some(session) = server.accept().await {
            drop(session);
        }
    });
    (addr, handle, url)
}

fn refusals(s: &ServerStats) -> [u64; 6] {
    [
        s.refused_400,
        s.refused_401,
        s.refused_403,
        s.refused_429,
        s.refused_503,
        s.handshake_failed,
    ]
}

/// Sends one hand-made upgrade and asserts the status, that the matching counter (and only
/// it) moved, and that nothing is tracked afterwards.
async fn expect_refused(
    addr: std::net::SocketAddr,
    handle: &ServerHandle,
    headers: &[(&str, &str)],
    status: u16,
) {
    let before = handle.stats();
    let response = raw_upgrade(addr, headers).await;
    assert_eq!(
        response.status, status,
        "headers {headers:?} got {:?}",
        response.head
    );
    assert!(response.header("sec-websocket-protocol").is_none());
    drop(response);
    wait_idle(handle).await;
    let after = handle.stats();
    let mut expected = refusals(&before);
    let slot = match status {
        400 => 0,
        401 => 1,
        403 => 2,
        429 => 3,
        503 => 4,
        other => panic!("unexpected status {other}"),
    };
    expected[slot] += 1;
    assert_eq!(refusals(&after), expected, "counters after {headers:?}");
    assert_eq!(after.upgraded, before.upgraded);
    assert_eq!(after.connections, 0);
    assert_eq!(handle.tracked_keys(), (0, 0));
}

#[tokio::test]
async fn origins_outside_the_exact_allowlist_get_403() {
    let (addr, handle, _) = strict_server(false).await;
    // No Origin at all: refused unless the policy allows missing origins.
    expect_refused(addr, &handle, &[MUX, GOOD], 403).await;
    for origin in [
        "null",
        "https://evil.com",
        "https://example.com.evil.com",
        "https://evil-example.com",
        "http://example.com",       // wrong scheme
        "https://example.com:8443", // wrong port
    ] {
        expect_refused(addr, &handle, &[("Origin", origin), MUX, GOOD], 403).await;
    }
}

#[tokio::test]
async fn missing_origin_is_admitted_only_when_allowed() {
    let (addr, handle, _) = strict_server(true).await;
    let response = raw_upgrade(addr, &[MUX, GOOD]).await;
    assert_eq!(response.status, 101, "{}", response.head);
    drop(response);
    wait_idle(&handle).await;
    assert_eq!(handle.stats().upgraded, 1);
}

#[tokio::test]
async fn origin_host_compares_case_insensitively() {
    let (addr, handle, _) = strict_server(false).await;
    // RFC 6454 §4/§6.2: the host of an origin is compared case-insensitively (ASCII
    // lowercased), so an upper-case host is the same origin and must be admitted.
    let response = raw_upgrade(addr, &[("Origin", "https://EXAMPLE.com"), MUX, GOOD]).await;
    assert_eq!(response.status, 101, "{}", response.head);
    assert_eq!(response.header("sec-websocket-protocol"), Some("mux.v1"));
    drop(response);
    wait_idle(&handle).await;
}

#[tokio::test]
async fn missing_subprotocol_gets_400() {
    let (addr, handle, _) = strict_server(false).await;
    let origin = ("Origin", "https://example.com");
    expect_refused(addr, &handle, &[origin, GOOD], 400).await;
    expect_refused(
        addr,
        &handle,
        &[origin, ("Sec-WebSocket-Protocol", "mux.v2, chat"), GOOD],
        400,
    )
    .await;
}

#[tokio::test]
async fn missing_or_invalid_token_gets_401() {
    let (addr, handle, _) = strict_server(false).await;
    let origin = ("Origin", "https://example.com");
    expect_refused(addr, &handle, &[origin, MUX], 401).await;
    expect_refused(
        addr,
        &handle,
        &[origin, MUX, ("Authorization", "Bearer bad-token")],
        401,
    )
    .await;
    expect_refused(
        addr,
        &handle,
        &[
            origin,
            ("Sec-WebSocket-Protocol", "mux.v1, bearer.bad-token"),
        ],
        401,
    )
    .await;
    // A `Basic` credential is not a bearer token.
    expect_refused(
        addr,
        &handle,
        &[origin, MUX, ("Authorization", "Basic good-token")],
        401,
    )
    .await;
}

/// Whatever the authenticator's reason, the peer sees a bare 401: the variant and the
/// `Other` reason are for the server's logs only.
#[tokio::test]
async fn every_auth_error_is_a_bare_401() {
    const REASON: &str = "reason-canary-51c2";
    let authenticate = |request: &mux_tokio::HandshakeRequest| {
        Err(match request.token.as_ref().map(|t| t.expose()) {
            None => AuthError::Missing,
            Some("expired") => AuthError::Expired,
            Some("other") => AuthError::other(REASON),
            Some(_) => AuthError::Invalid,
        })
    };
    let (server, _) = bind(common::open_config(), authenticate, AllowAll).await;
    let (addr, handle) = (server.local_addr(), server.handle());
    for error in [
        AuthError::Missing,
        AuthError::Expired,
        AuthError::other(REASON),
        AuthError::Invalid,
    ] {
        assert_eq!(error.status(), 401);
    }
    for token in [None, Some("expired"), Some("other"), Some("bad")] {
        let header = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![MUX];
        if let Some(header) = &header {
            headers.push(("Authorization", header));
        }
        let response = raw_upgrade(addr, &headers).await;
        assert_eq!(response.status, 401, "token {token:?}");
        let rest = String::from_utf8_lossy(&response.rest).into_owned();
        assert!(!response.head.contains(REASON) && !rest.contains(REASON));
        for variant in ["expired", "invalid", "credentials"] {
            assert!(
                !response.head.to_ascii_lowercase().contains(variant),
                "{variant} in {:?}",
                response.head
            );
        }
    }
    wait_idle(&handle).await;
    assert_eq!(handle.stats().refused_401, 4);
    drop(server);
}

#[tokio::test]
async fn token_in_header_or_subprotocol_upgrades_and_echoes_only_mux_v1() {
    let (addr, handle, _) = strict_server(false).await;
    let origin = ("Origin", "https://example.com");
    let by_header = raw_upgrade(addr, &[origin, MUX, GOOD]).await;
    let by_protocol = raw_upgrade(
        addr,
        &[
            origin,
            ("Sec-WebSocket-Protocol", "mux.v1, bearer.good-token"),
        ],
    )
    .await;
    for response in [&by_header, &by_protocol] {
        assert_eq!(response.status, 101, "{}", response.head);
        // Exactly `mux.v1`: the bearer entry must never be echoed back.
        assert_eq!(response.header("sec-websocket-protocol"), Some("mux.v1"));
        assert!(!response.head.contains("good-token"));
    }
    assert_eq!(handle.stats().connections, 2);
    assert_eq!(handle.tracked_keys(), (1, 1));
    drop((by_header, by_protocol));
    wait_idle(&handle).await;
    assert_eq!(handle.stats().upgraded, 2);
}

/// spec/http.md M-HTTP-4: with a token in both places the `Authorization` header decides and
/// the `bearer.` entry is ignored, so a good header upgrades past a bad entry and a bad header
/// is refused despite a good one. Among `bearer.` entries the first non-empty one counts, and
/// an empty token (in either place) is absent.
#[tokio::test]
async fn the_authorization_header_wins_over_a_bearer_subprotocol_entry() {
    let (addr, handle, _) = strict_server(false).await;
    let origin = ("Origin", "https://example.com");
    let protocols = |value| ("Sec-WebSocket-Protocol", value);
    let admitted = [
        vec![origin, GOOD, protocols("mux.v1, bearer.bad-token")],
        vec![
            origin,
            ("Authorization", "Bearer "),
            protocols("mux.v1, bearer.good-token"),
        ],
        vec![
            origin,
            protocols("mux.v1, bearer., bearer.good-token, bearer.bad-token"),
        ],
    ];
    for headers in &admitted {
        let response = raw_upgrade(addr, headers).await;
        assert_eq!(response.status, 101, "{headers:?}: {}", response.head);
    }
    wait_idle(&handle).await;
    let bad_header = ("Authorization", "Bearer bad-token");
    let refused = [
        vec![origin, bad_header, protocols("mux.v1, bearer.good-token")],
        vec![
            origin,
            protocols("mux.v1, bearer.bad-token, bearer.good-token"),
        ],
    ];
    for headers in &refused {
        expect_refused(addr, &handle, headers, 401).await;
    }
    assert_eq!(handle.stats().upgraded, 3);
}

#[tokio::test]
async fn permessage_deflate_is_never_negotiated() {
    let (addr, handle, _) = strict_server(false).await;
    let response = raw_upgrade(
        addr,
        &[
            ("Origin", "https://example.com"),
            MUX,
            GOOD,
            (
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_max_window_bits",
            ),
        ],
    )
    .await;
    assert_eq!(response.status, 101, "{}", response.head);
    assert!(
        response.header("sec-websocket-extensions").is_none(),
        "{}",
        response.head
    );
    drop(response);
    wait_idle(&handle).await;
}

#[tokio::test]
async fn client_connects_with_token_in_header_or_subprotocol() {
    let (_, handle, url) = strict_server(false).await;
    for in_protocol in [false, true] {
        let mut config = ClientConfig::default()
            .token("good-token")
            .origin("https://example.com")
            .reconnect(false);
        config.token_in_protocol = in_protocol;
        let client = within("connect", Client::connect(&url, config))
            .await
            .unwrap_or_else(|e| panic!("in_protocol={in_protocol}: {e}"));
        within("close", client.close()).await;
        wait_idle(&handle).await;
    }
    assert_eq!(handle.stats().upgraded, 2);
}

#[tokio::test]
async fn tokens_never_appear_in_errors() {
    const CANARY: &str = "canary-7f3a9c1e";
    let (addr, handle, url) = strict_server(false).await;
    for in_protocol in [false, true] {
        let mut config = ClientConfig::default()
            .token(CANARY)
            .origin("https://example.com")
            .reconnect(false);
        config.token_in_protocol = in_protocol;
        assert!(!format!("{config:?}").contains(CANARY));
        let error = match within("connect", Client::connect(&url, config)).await {
            Ok(_) => panic!("a bad token must be refused"),
            Err(e) => e,
        };
        assert!(
            matches!(&error, ConnectError::Refused { status: 401, .. }),
            "{error:?}"
        );
        let (display, debug) = (error.to_string(), format!("{error:?}"));
        assert!(!display.contains(CANARY) && !debug.contains(CANARY));
        assert!(!display.contains("canary") && !debug.contains("canary"));
    }
    // Nor in the HTTP response the server sends.
    let header = format!("Bearer {CANARY}");
    let response = raw_upgrade(
        addr,
        &[
            ("Origin", "https://example.com"),
            MUX,
            ("Authorization", &header),
        ],
    )
    .await;
    assert_eq!(response.status, 401);
    assert!(!response.head.contains(CANARY));
    drop(response);
    wait_idle(&handle).await;
    assert_eq!(handle.stats().refused_401, 3);
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_dropped_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = std::time::Duration::from_millis(200);
    let config = common::open_config().handshake_timeout(deadline);
    let (server, _) = bind(config, AllowAll, AllowAll).await;
    let handle = server.handle();
    // Slowloris: half a request line, then nothing.
    let mut tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    common::wait_until("the connection is admitted", || {
        handle.stats().connections == 1
    })
    .await;
    let mut buf = [0u8; 256];
    let read = within("the server to drop the connection", tcp.read(&mut buf)).await;
    let elapsed = started.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        elapsed >= deadline - std::time::Duration::from_millis(20),
        "{elapsed:?}"
    );
    wait_idle(&handle).await;
    let stats = handle.stats();
    assert_eq!(stats.handshake_failed, 1);
    assert_eq!(stats.upgraded, 0);
    drop(server);
}

#[tokio::test]
async fn an_unreadable_origin_is_not_a_missing_one() {
    // Even where requests without Origin are allowed, an Origin header that is present but
    // not visible ASCII is refused, not treated as absent.
    let (addr, handle, _) = strict_server(true).await;
    expect_refused(
        addr,
        &handle,
        &[("Origin", "https://ex\u{e9}ample.com"), MUX, GOOD],
        403,
    )
    .await;
}

#[tokio::test]
async fn a_repeated_origin_header_is_refused() {
    let (addr, handle, _) = strict_server(false).await;
    for pair in [
        ["https://example.com", "https://evil.com"],
        ["https://evil.com", "https://example.com"],
    ] {
        expect_refused(
            addr,
            &handle,
            &[("Origin", pair[0]), ("Origin", pair[1]), MUX, GOOD],
            403,
        )
        .await;
    }
}

/// The whole of spec/http.md's order on the plain server (the axum route runs the same
/// matrix in tests/axum.rs).
#[tokio::test]
async fn the_handshake_matrix() {
    let (server, _url) = bind(
        common::matrix_config(),
        token_authenticator,
        mux_tokio::AllowAll,
    )
    .await;
    common::handshake_matrix(server.local_addr()).await;
}

//! Credentials never print: every public type that carries a bearer token or a session's
//! `auth` bytes is formatted with `{:?}` and `{:#?}` around a canary secret, which must not
//! appear, as text, as a decimal byte list or in hex. The last test takes the canary through
//! a real handshake and OPEN, so the values formatted are the ones the hooks receive.
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{bind, open_config, within};
use mux_tokio::proto::frame::{decode_message, encode_message, Frame, Open, OpenRequest, Text};
use mux_tokio::proto::{Connection, Event, Side, Timestamp};
use mux_tokio::{
    Client, ClientConfig, Config, Credential, Grant, HandshakeRequest, OpenInfo, Principal,
    SessionId, Token,
};

const CANARY: &str = "canary-secret-5e1f";

/// The ways a formatted secret could show: as text, as `[99, 97, …]`, as hex.
fn leaks(formatted: &str) -> Option<&'static str> {
    let decimal = CANARY
        .bytes()
        .take(6)
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let hex: String = CANARY.bytes().take(6).map(|b| format!("{b:02x}")).collect();
    let compact = formatted.replace([' ', '\n'], "");
    if formatted.contains(CANARY) {
        Some("the text")
    } else if compact.contains(&decimal.replace(' ', "")) {
        Some("its bytes in decimal")
    } else if formatted.to_ascii_lowercase().contains(&hex) {
        Some("its bytes in hex")
    } else {
        None
    }
}

/// Formats `value` both ways and fails if either shows the canary.
fn assert_redacted(what: &str, value: &impl Debug) {
    for formatted in [format!("{value:?}"), format!("{value:#?}")] {
        if let Some(how) = leaks(&formatted) {
            panic!("{what} prints the credential ({how}): {formatted}");
        }
    }
}

fn canary_credential() -> Credential {
    Credential::from_static(CANARY.as_bytes())
}

#[test]
fn the_leak_check_catches_each_encoding() {
    assert!(leaks(CANARY).is_some());
    assert!(leaks(&format!("{:?}", CANARY.as_bytes())).is_some());
    assert!(leaks(&format!("{:#?}", CANARY.as_bytes())).is_some());
    assert!(leaks(&format!("{:?}", Bytes::from_static(CANARY.as_bytes()))).is_some());
    let hex: String = CANARY.bytes().map(|b| format!("{b:02X}")).collect();
    assert!(leaks(&hex).is_some());
    assert!(leaks("Credential(<redacted, 18 bytes>)").is_none());
}

#[test]
fn frames_and_events_never_print_credentials() {
    let credential = canary_credential();
    assert_redacted("Credential", &credential);
    assert_eq!(credential.expose().as_ref(), CANARY.as_bytes());

    let open = Open {
        session_id: SessionId(1),
        request: OpenRequest::default(),
        kind: Text::from_static("chat"),
        auth: credential.clone(),
    };
    assert_redacted("Open", &open);
    let frame = Frame::Open(open);
    assert_redacted("Frame::Open", &frame);

    // The wire still carries the bytes, and the decoded frame redacts them too.
    let wire = encode_message([&Frame::Settings(Default::default()), &frame]).freeze();
    assert!(wire.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()));
    let decoded = decode_message(wire.clone()).unwrap();
    assert_eq!(decoded[1], frame);
    assert_redacted("a decoded OPEN", &decoded);

    // The event a server's connection raises for it.
    let mut server = Connection::new(Side::Server, Config::default(), Timestamp::ZERO);
    server.handle_message(Timestamp::ZERO, wire);
    let incoming = std::iter::from_fn(|| server.poll_event())
        .find(|e| matches!(e, Event::Incoming { .. }))
        .expect("an Incoming event");
    match &incoming {
        Event::Incoming { auth, .. } => assert_eq!(auth, &credential),
        other => panic!("{other:?}"),
    }
    assert_redacted("Event::Incoming", &incoming);
}

#[test]
fn the_driver_types_never_print_credentials() {
    assert_redacted("Token", &Token::new(CANARY));
    assert_redacted(
        "Principal",
        &Principal::with_data("alice", CANARY.to_owned()),
    );
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // Header values (cookies, Authorization) may carry credentials: only names print.
    let mut headers = tokio_tungstenite::tungstenite::http::HeaderMap::new();
    for name in ["cookie", "authorization"] {
        headers.insert(name, format!("session={CANARY}").parse().unwrap());
    }
    let request = HandshakeRequest {
        peer,
        path: format!("/mux?token={CANARY}"),
        origin: Some("https://app.example.com".to_owned()),
        token: Some(Token::new(CANARY)),
        headers,
    };
    assert_redacted("HandshakeRequest", &request);
    assert_redacted(
        "OpenInfo",
        &OpenInfo {
            id: SessionId(1),
            kind: "chat".into(),
            auth: canary_credential(),
        },
    );
    for in_protocol in [false, true] {
        let mut config = ClientConfig::default()
            .token(CANARY)
            .reopen_on_reconnect("chat", canary_credential());
        config.token_in_protocol = in_protocol;
        assert_redacted("ClientConfig", &config);
    }
}

#[cfg(feature = "tls")]
#[test]
fn a_client_config_with_tls_never_prints_credentials() {
    let tls = mux_tokio::rustls::ClientConfig::builder_with_provider(Arc::new(
        mux_tokio::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(mux_tokio::rustls::RootCertStore::empty())
    .with_no_client_auth();
    let config = ClientConfig::default()
        .token(CANARY)
        .reopen_on_reconnect("chat", canary_credential())
        .tls(Arc::new(tls));
    assert_redacted("ClientConfig with TLS", &config);
}

/// The canary goes through a real handshake (as the bearer token, and in the path's query)
/// and a real OPEN (as the session's auth): what the authenticator and the authorizer are
/// handed carries it, and prints without it.
#[tokio::test]
async fn what_the_hooks_receive_prints_without_the_credential() {
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let (by_authenticator, by_authorizer) = (seen.clone(), seen.clone());
    let authenticate = move |request: &HandshakeRequest| {
        assert_eq!(request.token.as_ref().map(Token::expose), Some(CANARY));
        let mut seen = by_authenticator.lock().unwrap();
        seen.push(("HandshakeRequest".into(), format!("{request:?}")));
        seen.push(("HandshakeRequest".into(), format!("{request:#?}")));
        Ok(Principal::new("alice"))
    };
    let authorize = move |principal: Principal, open: OpenInfo| {
        let seen = by_authorizer.clone();
        async move {
            assert_eq!(open.auth.expose().as_ref(), CANARY.as_bytes());
            let mut seen = seen.lock().unwrap();
            for (what, formatted) in [
                ("OpenInfo", format!("{open:?}")),
                ("OpenInfo", format!("{open:#?}")),
                ("Principal", format!("{principal:#?}")),
            ] {
                seen.push((what.into(), formatted));
            }
            Ok(Grant::full())
        }
    };
    let (mut server, _) = bind(open_config(), authenticate, authorize).await;
    let url = format!("ws://{}/mux?token={CANARY}", server.local_addr());
    tokio::spawn(async move { while server.accept().await.is_some() {} });
    let config = ClientConfig::default().token(CANARY).reconnect(false);
    let mut client = within("connect", Client::connect(&url, config))
        .await
        .expect("connect");
    let session = within("open", client.open("chat", canary_credential()))
        .await
        .expect("open");
    drop(session);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 5, "both hooks ran: {seen:?}");
    for (what, formatted) in seen.iter() {
        if let Some(how) = leaks(formatted) {
            panic!("{what} prints the credential ({how}): {formatted}");
        }
    }
}

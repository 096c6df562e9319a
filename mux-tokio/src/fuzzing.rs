//! Fuzz body for the handshake parsers (enabled by the `fuzzing` feature): the cargo-fuzz
//! target `handshake_headers` and the corpus replay (`tests/fuzz_corpus.rs`) call
//! [`handshake_headers`]. Not part of the public API.

use std::net::{Ipv4Addr, SocketAddr};

use crate::{bearer_token, parse_protocols, HandshakeRequest, Origin, OriginPolicy, Token};

/// The fixed allowlist: the only (scheme, host, port) tuples [`OriginPolicy::admits`] may
/// admit, as `Origin`'s `Debug` writes them.
const ALLOWED: [(&str, &str); 4] = [
    ("https://example.com", "https://example.com:443"),
    ("http://localhost:3000", "http://localhost:3000"),
    ("https://[::1]:8443", "https://[::1]:8443"),
    ("wss://api.example.com", "wss://api.example.com:443"),
];

/// Asserts that `token` does not show in `debug`, unless it shows in the same output with
/// the token replaced (it is then a word of the output, like `Some`, not a leak).
fn assert_redacted(token: &Token, debug: &str, skeleton: &str) {
    let secret = token.expose();
    assert!(
        !debug.contains(secret) || skeleton.contains(secret),
        "a token shows in Debug output: {debug}"
    );
}

/// Arbitrary input split into header values at NUL bytes (lossy UTF-8), through
/// [`Origin::parse`], [`OriginPolicy::admits`], [`parse_protocols`] and [`bearer_token`].
///
/// No panic; the policy admits only its exact allowlisted tuples; a parsed origin's
/// canonical form parses back to it; a token is non-empty, trimmed, comes from its header
/// and never appears in any `Debug` output.
pub fn handshake_headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let fields: Vec<&str> = text.split('\0').collect();

    let policy = OriginPolicy::allow(ALLOWED.iter().map(|(entry, _)| *entry));
    assert!(!policy.admits(None));
    assert!(policy.clone().allow_missing(true).admits(None));

    for field in &fields {
        if let Some(origin) = Origin::parse(field) {
            let canonical = format!("{origin:?}");
            assert_eq!(
                Origin::parse(&canonical).as_ref(),
                Some(&origin),
                "{field:?} parses to {canonical}, which does not parse back"
            );
        }
        if policy.admits(Some(field)) {
            let Some(origin) = Origin::parse(field.trim()) else {
                panic!("{field:?} is admitted but does not parse");
            };
            let canonical = format!("{origin:?}");
            assert!(
                ALLOWED.iter().any(|(_, tuple)| *tuple == canonical),
                "{field:?} admitted as {canonical}, which is not allowlisted"
            );
        }

        if let Some(token) = bearer_token(field) {
            let secret = token.expose();
            assert!(!secret.is_empty());
            assert_eq!(secret, secret.trim());
            assert!(field.contains(secret));
            assert_redacted(&token, &format!("{token:?}"), "Token(<redacted>)");
        }
    }

    // All fields as several Sec-WebSocket-Protocol headers, then each one alone.
    for values in std::iter::once(&fields[..]).chain(fields.chunks(1)) {
        let protocols = parse_protocols(values.iter().copied());
        if let Some(token) = &protocols.token {
            let secret = token.expose();
            assert!(!secret.is_empty());
            // Exactly the rest of one comma-separated entry (inner spaces are the
            // authenticator's to refuse: subprotocol entries are tokens, RFC 6455 §4.1).
            let entry = format!("{}{secret}", crate::TOKEN_PROTOCOL_PREFIX);
            assert!(values
                .iter()
                .flat_map(|v| v.split(','))
                .any(|e| e.trim() == entry));
            let skeleton = format!(
                "{:?}",
                crate::Protocols {
                    offers_mux: protocols.offers_mux,
                    token: Some(Token::new("\u{1}")),
                }
            );
            assert_redacted(token, &format!("{protocols:?}"), &skeleton);
            let request = |token: Token| {
                format!(
                    "{:?}",
                    HandshakeRequest {
                        peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
                        path: "/mux".to_owned(),
                        origin: Some("https://example.com".to_owned()),
                        token: Some(token),
                        headers: Default::default(),
                    }
                )
            };
            let skeleton = request(Token::new("\u{1}"));
            assert_redacted(token, &request(token.clone()), &skeleton);
        }
    }
}

/// Arbitrary bytes as an upgrade request head, through the server's own parser
/// (`head::parse`, RFC 6455 §4.2.1). No panic; a head that parses has a target, at most
/// the server's header count, and a 28-character `Sec-WebSocket-Accept`; parsing the same
/// bytes twice gives the same answer.
pub fn upgrade_head(data: &[u8]) {
    let first = crate::server::parse_head(data);
    let again = crate::server::parse_head(data);
    assert_eq!(first.is_ok(), again.is_ok());
    if let Ok((target, headers, accept_key)) = first {
        assert!(!target.is_empty());
        assert!(headers <= crate::server::MAX_HEADERS);
        assert_eq!(accept_key.len(), 28);
    }
}

//! Handshake checks that run before the 101: Origin against an exact allowlist, subprotocol
//! negotiation, and token extraction. Pure functions over header values, so they are tested
//! (and fuzzed) without sockets.

use std::fmt;

use crate::auth::Token;

/// The WebSocket subprotocol token of this protocol's version 1 (spec/frames.md#transport).
pub const SUBPROTOCOL: &str = "mux.v1";

/// Prefix of a `Sec-WebSocket-Protocol` entry that carries a bearer token, for browsers,
/// which cannot set an `Authorization` header on a WebSocket.
pub const TOKEN_PROTOCOL_PREFIX: &str = "bearer.";

/// A web origin: scheme, host and port (RFC 6454). Hosts compare ASCII case-insensitively,
/// default ports are made explicit; nothing else is normalized, and there are no wildcards.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` (an `Origin` header value or an allowlist entry).
    /// Refuses `null`, paths, user info, queries, fragments and unknown schemes.
    pub fn parse(value: &str) -> Option<Origin> {
        let (scheme, rest) = value.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => return None,
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '\\']) {
            return None;
        }
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal has colons inside brackets; a port follows the closing bracket.
            Some((host, port)) if !port.contains(']') => (host, parse_port(port)?),
            _ => (rest, default_port),
        };
        if !is_origin_host(host) {
            return None;
        }
        Some(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// A port as browsers serialize it (RFC 6454 §6.2 with RFC 3986's `port`): 1 to 5 ASCII
/// digits, no sign, no leading zero, not 0. Anything looser would let two spellings of one
/// origin compare differently from how the browser that sent them sees them.
fn parse_port(port: &str) -> Option<u16> {
    let canonical = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && !port.starts_with('0');
    if !canonical {
        return None;
    }
    port.parse().ok()
}

/// A host as it may appear in an origin: a bracketed IPv6 literal, or a name or IPv4
/// address of ASCII letters, digits, `-` and `.` (internationalized names arrive in their
/// punycode form). Colons and brackets anywhere else are refused.
fn is_origin_host(host: &str) -> bool {
    if let Some(literal) = host.strip_prefix('[') {
        let Some(literal) = literal.strip_suffix(']') else {
            return false;
        };
        return literal.contains(':')
            && literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Which `Origin` headers may open a connection (cross-site WebSocket hijacking defence).
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: Vec<Origin>,
    allow_missing: bool,
}

impl OriginPolicy {
    /// Allows exactly these origins (entries that do not parse are ignored).
    pub fn allow<'a>(origins: impl IntoIterator<Item = &'a str>) -> Self {
        OriginPolicy {
            allowed: origins.into_iter().filter_map(Origin::parse).collect(),
            allow_missing: false,
        }
    }

    /// Also admits requests with no `Origin` header: non-browser clients (services, CLIs).
    /// Browsers always send `Origin` on WebSockets, so this does not open a CSWSH hole.
    pub fn allow_missing(mut self, allow: bool) -> Self {
        self.allow_missing = allow;
        self
    }

    /// Adds one origin.
    pub fn with_origin(mut self, origin: &str) -> Self {
        if let Some(o) = Origin::parse(origin) {
            self.allowed.push(o);
        }
        self
    }

    /// Whether a request with this `Origin` header value (or none) is admitted.
    pub fn admits(&self, header: Option<&str>) -> bool {
        match header {
            None => self.allow_missing,
            Some(value) => Origin::parse(value.trim()).is_some_and(|o| self.allowed.contains(&o)),
        }
    }
}

/// The outcome of reading `Sec-WebSocket-Protocol`.
#[derive(Debug, PartialEq, Eq)]
pub struct Protocols {
    /// The client offered [`SUBPROTOCOL`].
    pub offers_mux: bool,
    /// A `bearer.…` entry, if any.
    pub token: Option<Token>,
}

/// Parses the comma-separated `Sec-WebSocket-Protocol` values (there may be several headers).
pub fn parse_protocols<'a>(values: impl IntoIterator<Item = &'a str>) -> Protocols {
    let mut offers_mux = false;
    let mut token = None;
    for entry in values.into_iter().flat_map(|v| v.split(',')).map(str::trim) {
        if entry == SUBPROTOCOL {
            offers_mux = true;
        } else if let Some(t) = entry.strip_prefix(TOKEN_PROTOCOL_PREFIX) {
            if !t.is_empty() && token.is_none() {
                token = Some(Token::new(t));
            }
        }
    }
    Protocols { offers_mux, token }
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer_token(value: &str) -> Option<Token> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| Token::new(token))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;

    fn policy() -> OriginPolicy {
        OriginPolicy::allow(["https://example.com", "http://localhost:3000"])
    }

    #[test]
    fn only_exact_origins_are_admitted() {
        let p = policy();
        assert!(p.admits(Some("https://example.com")));
        assert!(p.admits(Some("https://example.com:443")));
        assert!(p.admits(Some("http://localhost:3000")));
        for bad in [
            "null",
            "https://evil.com",
            "https://example.com.evil.com",
            "https://evil-example.com",
            "https://notexample.com",
            "http://example.com",
            "https://example.com:8443",
            "http://localhost:3001",
            "https://example.com/",
            "https://user@example.com",
            "https://example.com@evil.com",
            "",
            "example.com",
            // Loose spellings of an allowed port: not how a browser serializes one.
            "http://localhost:+3000",
            "http://localhost:03000",
            "http://localhost:",
            "http://localhost:0",
            "http://localhost:65536",
            "http://localhost:003000",
            // Colons and brackets outside an IPv6 literal.
            "http://localhost:3000:3000",
            "https://example.com:443:443",
            "https://[example.com]",
            "https://[::1",
            "https://::1]",
        ] {
            assert!(!p.admits(Some(bad)), "{bad}");
        }
        assert!(!p.admits(None));
        assert!(p.clone().allow_missing(true).admits(None));
    }

    #[test]
    fn ipv6_literals_and_explicit_default_ports() {
        let p = OriginPolicy::allow(["http://[::1]:3000", "https://[2001:db8::1]"]);
        assert!(p.admits(Some("http://[::1]:3000")));
        assert!(p.admits(Some("https://[2001:DB8::1]")));
        assert!(p.admits(Some("https://[2001:db8::1]:443")));
        assert!(!p.admits(Some("http://[::1]")));
        assert!(!p.admits(Some("http://[::2]:3000")));
        assert!(!p.admits(Some("http://[::1]:03000")));
        assert!(!p.admits(Some("http://[:3000")));
        assert_eq!(
            Origin::parse("https://[::1]:8443").map(|o| o.port),
            Some(8443)
        );
        assert_eq!(Origin::parse("https://[::1]").map(|o| o.port), Some(443));
        assert_eq!(Origin::parse("https://[::g]"), None);
    }

    #[test]
    fn host_case_follows_rfc6454() {
        assert!(policy().admits(Some("https://EXAMPLE.com")));
        assert!(policy().admits(Some("HTTPS://example.com")));
    }

    #[test]
    fn protocols_and_tokens() {
        let p = parse_protocols(["mux.v1, bearer.abc.def"]);
        assert!(p.offers_mux);
        assert_eq!(p.token.unwrap().expose(), "abc.def");
        assert!(!parse_protocols(["chat", "mux.v2"]).offers_mux);
        assert_eq!(bearer_token("Bearer xyz").unwrap().expose(), "xyz");
        assert_eq!(bearer_token("bearer   xyz ").unwrap().expose(), "xyz");
        assert!(bearer_token("Basic xyz").is_none());
        assert!(bearer_token("Bearer ").is_none());
    }

    #[test]
    fn tokens_never_print() {
        let t = Token::new("secret-canary");
        assert!(!format!("{t:?}").contains("canary"));
    }
}

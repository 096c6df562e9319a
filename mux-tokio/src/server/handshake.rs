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
            Some((host, port)) if !port.contains(']') => (host, port.parse::<u16>().ok()?),
            _ => (rest, default_port),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        {
            return None;
        }
        Some(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
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
        ] {
            assert!(!p.admits(Some(bad)), "{bad}");
        }
        assert!(!p.admits(None));
        assert!(p.clone().allow_missing(true).admits(None));
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

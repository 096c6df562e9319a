//! The upgrade request, read and answered by the server itself: a small bounded buffer for
//! the head (an unauthenticated peer costs at most `max_head` bytes), RFC 6455 §4.2.1's
//! checks, and the raw responses. Owning this step, instead of leaving it to the WebSocket
//! library, is what lets authentication be async and run under the same deadline, and lets
//! the server take any stream (TLS included) with every check kept.

use std::fmt;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName, HeaderValue};

/// Headers an upgrade request may have. Browsers send about twenty.
pub(crate) const MAX_HEADERS: usize = 64;

/// The first reservation for a head: a browser's upgrade request without cookies fits.
const FIRST_READ: usize = 1024;

/// Why an upgrade request was refused before any check of ours: each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not an HTTP/1.1 GET upgrade to WebSocket, or malformed: 400.
    BadRequest,
    /// `Sec-WebSocket-Version` other than 13: 426 with `Sec-WebSocket-Version: 13`.
    Version,
    /// Head longer than the bound or more headers than [`MAX_HEADERS`]: 431.
    TooLarge,
    /// The peer closed or the socket failed before the head was complete: no answer.
    Gone,
}

impl HeadError {
    /// The status line to answer with; `None` when the peer is gone.
    pub(crate) fn status(self) -> Option<u16> {
        match self {
            HeadError::BadRequest => Some(400),
            HeadError::Version => Some(426),
            HeadError::TooLarge => Some(431),
            HeadError::Gone => None,
        }
    }
}

/// A probe of the server's health, answered before (and instead of) any upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// `GET /healthz`: the process serves.
    Live,
    /// `GET /readyz`: it takes new connections (not draining, not near its budget).
    Ready,
}

/// What a head asks for.
#[derive(Debug)]
pub(crate) enum Head {
    /// A WebSocket upgrade.
    Upgrade(UpgradeRequest),
    /// A health probe (a plain GET, no `Upgrade`).
    Probe(Probe),
}

/// A valid upgrade request: what the checks and the authenticator read.
pub(crate) struct UpgradeRequest {
    /// The request target (path and query).
    pub(crate) target: String,
    /// Every header, as sent (repeated ones kept).
    pub(crate) headers: HeaderMap,
    /// `Sec-WebSocket-Accept` for the 101.
    pub(crate) accept_key: String,
}

impl fmt::Debug for UpgradeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may carry credentials; the target may carry a misplaced token.
        f.debug_struct("UpgradeRequest")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Reads the request head into a buffer of at most `max_head` bytes. Returns the request
/// and whatever the peer sent after the head (the first WebSocket frames, pipelined).
#[cfg(test)]
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_head: usize,
) -> Result<(UpgradeRequest, Vec<u8>), HeadError> {
    match read_any(stream, max_head, false).await? {
        (Head::Upgrade(request), rest) => Ok((request, rest)),
        (Head::Probe(_), _) => Err(HeadError::BadRequest),
    }
}

/// Reads a head that is an upgrade, or, with `probes`, a health probe.
pub(crate) async fn read_any<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_head: usize,
    probes: bool,
) -> Result<(Head, Vec<u8>), HeadError> {
    let mut buf = BytesMut::with_capacity(FIRST_READ.min(max_head));
    // Only the bytes new since the last read are searched for the end of the head, so a
    // peer trickling one byte at a time costs linear work, not quadratic.
    let mut searched: usize = 0;
    loop {
        if buf.len() >= max_head {
            return Err(HeadError::TooLarge);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(max_head.saturating_sub(buf.len())).max(1));
        }
        let room = max_head.saturating_sub(buf.len());
        let n = (&mut *stream)
            .take(u64::try_from(room).unwrap_or(u64::MAX))
            .read_buf(&mut buf)
            .await
            .map_err(|_| HeadError::Gone)?;
        if n == 0 {
            return Err(HeadError::Gone);
        }
        let from = searched.saturating_sub(3);
        if let Some(end) = find_head_end(buf.get(from..).unwrap_or_default()) {
            let end = from.saturating_add(end);
            let head = buf.get(..end).unwrap_or_default();
            let rest = buf.get(end..).unwrap_or_default().to_vec();
            if probes {
                if let Some(probe) = probe(head) {
                    return Ok((Head::Probe(probe), rest));
                }
            }
            return Ok((Head::Upgrade(parse(head)?), rest));
        }
        searched = buf.len();
    }
}

/// The offset just past `\r\n\r\n`, if the buffer holds it.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .and_then(|p| p.checked_add(4))
}

/// A `GET /healthz` or `GET /readyz` (query ignored) that asks for no upgrade.
fn probe(head: &[u8]) -> Option<Probe> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    request.parse(head).ok()?;
    if request.method != Some("GET")
        || request
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
    {
        return None;
    }
    let path = request.path?.split('?').next()?;
    match path {
        "/healthz" => Some(Probe::Live),
        "/readyz" => Some(Probe::Ready),
        _ => None,
    }
}

/// Answers a probe: 200 or 503 with a one-word body, then closes.
pub(crate) async fn answer_probe<S: AsyncWrite + Unpin>(stream: &mut S, ok: bool, word: &str) {
    let status = if ok {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let body = format!("{word}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Parses a complete head and applies RFC 6455 §4.2.1.
pub(crate) fn parse(head: &[u8]) -> Result<UpgradeRequest, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::BadRequest),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::BadRequest),
    }
    if request.method != Some("GET") || request.version != Some(1) {
        return Err(HeadError::BadRequest);
    }
    let target = request.path.ok_or(HeadError::BadRequest)?.to_owned();
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::BadRequest)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| HeadError::BadRequest)?;
        headers.append(name, value);
    }
    let has_token = |name: &str, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !headers.contains_key("host")
        || !has_token("upgrade", "websocket")
        || !has_token("connection", "upgrade")
    {
        return Err(HeadError::BadRequest);
    }
    if headers
        .get("sec-websocket-version")
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(HeadError::Version);
    }
    // A nonce of 16 bytes in base64 (RFC 6455 §4.1): 24 characters ending in `==`.
    let key = headers
        .get("sec-websocket-key")
        .map(HeaderValue::as_bytes)
        .filter(|k| k.len() == 24 && k.ends_with(b"=="))
        .ok_or(HeadError::BadRequest)?;
    let accept_key = derive_accept_key(key);
    Ok(UpgradeRequest {
        target,
        headers,
        accept_key,
    })
}

/// Answers a refused request and closes the write side. `Retry-After` with 429 and 503
/// (spec/http.md, M-HTTP-1).
pub(crate) async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    retry_after_secs: u64,
) {
    let reason = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut response = format!("HTTP/1.1 {status} {reason}\r\n");
    if status == 429 || status == 503 {
        response.push_str(&format!("Retry-After: {}\r\n", retry_after_secs.max(1)));
    }
    if status == 426 {
        response.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    response.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The 101 that completes the upgrade, echoing exactly `mux.v1` (spec/http.md).
pub(crate) fn switching_protocols(accept_key: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
        super::SUBPROTOCOL
    )
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

    const GOOD: &str = "GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mux.v1\r\n\r\n";

    #[test]
    fn a_valid_upgrade_parses_with_rfc6455s_accept_key() {
        let r = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(r.target, "/ws?x=1");
        // The example of RFC 6455 §1.3.
        assert_eq!(r.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(r.headers.get("sec-websocket-protocol").unwrap(), "mux.v1");
    }

    #[test]
    fn each_missing_piece_has_its_status() {
        let cases = [
            ("GET", "POST", HeadError::BadRequest),
            ("HTTP/1.1", "HTTP/1.0", HeadError::BadRequest),
            ("Host: a\r\n", "", HeadError::BadRequest),
            ("Upgrade: websocket", "Upgrade: h2c", HeadError::BadRequest),
            ("keep-alive, Upgrade", "keep-alive", HeadError::BadRequest),
            ("Version: 13", "Version: 8", HeadError::Version),
            ("dGhlIHNhbXBsZSBub25jZQ==", "short", HeadError::BadRequest),
        ];
        for (from, to, error) in cases {
            let head = GOOD.replacen(from, to, 1);
            assert_eq!(parse(head.as_bytes()).unwrap_err(), error, "{from} -> {to}");
        }
        let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = GOOD.replacen("Host: a\r\n", &format!("Host: a\r\n{many}"), 1);
        assert_eq!(parse(head.as_bytes()).unwrap_err(), HeadError::TooLarge);
    }

    #[tokio::test]
    async fn the_head_is_bounded_and_pipelined_bytes_are_kept() {
        let mut input = GOOD.as_bytes().to_vec();
        input.extend_from_slice(b"\x82\x00");
        let (request, rest) = read_head(&mut input.as_slice(), 8192).await.unwrap();
        assert_eq!(request.target, "/ws?x=1");
        assert_eq!(rest, b"\x82\x00");
        // One byte short of the bound is enough to refuse a head that has no end.
        let endless = vec![b'a'; 9000];
        assert_eq!(
            read_head(&mut endless.as_slice(), 8192).await.unwrap_err(),
            HeadError::TooLarge
        );
        assert_eq!(
            read_head(&mut &GOOD.as_bytes()[..40], 8192)
                .await
                .unwrap_err(),
            HeadError::Gone
        );
        // A head that ends exactly at the bound is read.
        assert!(read_head(&mut GOOD.as_bytes(), GOOD.len()).await.is_ok());
    }

    #[tokio::test]
    async fn a_head_trickled_byte_by_byte_is_found() {
        let (client, mut server) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            let mut client = client;
            for b in GOOD.as_bytes() {
                client.write_all(&[*b]).await.unwrap();
            }
            client
        });
        let (request, rest) = read_head(&mut server, 8192).await.unwrap();
        assert_eq!(request.target, "/ws?x=1");
        assert!(rest.is_empty());
        drop(writer.await.unwrap());
    }
}

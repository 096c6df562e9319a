//! The client: connect, open sessions, and reconnect with exponential backoff and full
//! jitter when the connection drops.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mux_proto::{CloseCode, Credential, Side};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tracing::{debug, info_span, warn};

use crate::auth::{AllowAll, Authorizer, Token};
use crate::driver::{random_seed, spawn_connection, Acceptor, ConnectionHandle, DriverOptions};
use crate::error::OpenError;
use crate::server::{SUBPROTOCOL, TOKEN_PROTOCOL_PREFIX};
use crate::session::Session;
use crate::topic::{StreamPosition, TopicStream, TopicStreamError};
use crate::transport::TungsteniteTransport;

/// Exponential backoff with full jitter: the n-th retry waits a uniformly random time in
/// `[0, min(max, base × 2^n)]`, so a fleet of clients that lost the same server does not
/// reconnect in lockstep.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    /// The first ceiling. Default 100 ms.
    pub base: Duration,
    /// The largest ceiling. Default 30 s.
    pub max: Duration,
    /// Give up after this many consecutive failed attempts; `None` retries forever. Default 10.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(30),
            max_attempts: Some(10),
        }
    }
}

impl Backoff {
    /// A schedule with these bounds.
    pub fn new(base: Duration, max: Duration, max_attempts: Option<u32>) -> Self {
        Backoff {
            base,
            max,
            max_attempts,
        }
    }

    /// The ceiling for retry `attempt` (0-based): `min(max, base × 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay for retry `attempt`, given a uniformly random `random` in `0..=u64::MAX`.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos();
        let scaled = ceiling
            .saturating_mul(u128::from(random))
            .checked_div(u128::from(u64::MAX))
            .unwrap_or(0);
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
    }
}

/// Client configuration.
///
/// Its `Debug` never shows the token or the re-open credentials.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The protocol's limits and timeouts.
    pub protocol: mux_proto::Config,
    /// The bearer token, sent as `Authorization: Bearer`, or, with `token_in_protocol`, as a
    /// `Sec-WebSocket-Protocol` entry (what a browser has to do).
    pub token: Option<Token>,
    /// Send the token as a subprotocol entry instead of a header.
    pub token_in_protocol: bool,
    /// An `Origin` header to send (browsers always do; services usually don't).
    pub origin: Option<String>,
    /// Reconnect when the connection drops. Default true.
    pub reconnect: bool,
    /// The retry schedule.
    pub backoff: Backoff,
    /// Deadline for TCP connect plus the handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// A write the server does not read within this long drops the connection. Default 10 s.
    pub write_timeout: Duration,
    /// The re-open policy: sessions (kind, per-session credentials) the client opens again
    /// after every reconnect, delivering them through [`Client::accept`] and reporting each
    /// with [`ClientEvent::Reopened`]. Default empty: the application re-opens what it needs
    /// on [`ClientEvent::Connected`].
    pub reopen: Vec<(String, Credential)>,
    /// The TLS configuration for `wss://` URLs (feature `tls`): a custom root, a client
    /// certificate, ALPN. `None` trusts the Mozilla roots of `webpki-roots`.
    #[cfg(feature = "tls")]
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ClientConfig");
        s.field("protocol", &self.protocol)
            .field("token", &self.token)
            .field("token_in_protocol", &self.token_in_protocol)
            .field("origin", &self.origin)
            .field("reconnect", &self.reconnect)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("reopen", &self.reopen);
        // Only whether there is one: a rustls config may hold a client certificate's key.
        #[cfg(feature = "tls")]
        s.field(
            "tls",
            &self.tls.as_ref().map(|_| "<custom rustls::ClientConfig>"),
        );
        s.finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            protocol: mux_proto::Config::default(),
            token: None,
            token_in_protocol: false,
            origin: None,
            reconnect: true,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            reopen: Vec::new(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl ClientConfig {
    /// Builder: the bearer token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Token::new(token));
        self
    }

    /// Builder: reconnect or not.
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// Builder: the retry schedule.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Builder: the Origin header.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Builder: the protocol configuration.
    pub fn protocol(mut self, protocol: mux_proto::Config) -> Self {
        self.protocol = protocol;
        self
    }

    /// Builder: the TLS configuration for `wss://` URLs, for example one that trusts a
    /// private CA (feature `tls`).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Builder: re-open a session of `kind` with `auth` after every reconnect (the re-open
    /// policy; see [`ClientConfig::reopen`]).
    pub fn reopen_on_reconnect(
        mut self,
        kind: impl Into<String>,
        auth: impl Into<Credential>,
    ) -> Self {
        self.reopen.push((kind.into(), auth.into()));
        self
    }
}

/// What happened to the client's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Connected (`attempt` 0 is the first connection; later ones are reconnects). Sessions
    /// of the previous connection have ended: re-open what you need.
    Connected {
        /// Consecutive attempts it took.
        attempt: u32,
        /// How many times the client has connected in all.
        generation: u64,
    },
    /// The connection ended with this code (`None`: it was lost without one).
    Disconnected {
        /// The close code.
        code: Option<CloseCode>,
    },
    /// Waiting `delay` before attempt `attempt`.
    Reconnecting {
        /// The attempt about to be made.
        attempt: u32,
        /// The jittered delay.
        delay: Duration,
    },
    /// The client stopped reconnecting: `max_attempts` consecutive attempts failed, or the
    /// server refused the handshake with a status that retrying cannot fix (400, 401, 403).
    GaveUp,
    /// After a reconnect, the re-open policy opened `kind` again: the new session is waiting
    /// in [`Client::accept`], or the server refused it.
    Reopened {
        /// The session kind.
        kind: String,
        /// Whether it opened.
        outcome: Result<(), OpenError>,
    },
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not `ws://host[:port][/path]` or `wss://…`.
    #[error("invalid URL: expected ws://host[:port][/path] or wss://…")]
    InvalidUrl,
    /// A `wss://` URL, but mux-tokio was built without its `tls` feature.
    #[error("wss:// needs mux-tokio's `tls` feature")]
    TlsNotEnabled,
    /// The token or the origin cannot be sent as an HTTP header value (the value itself is
    /// never part of the error).
    #[error("the {field} is not a valid HTTP header value")]
    InvalidHeader {
        /// Which setting: `"token"` or `"origin"`.
        field: &'static str,
    },
    /// The TCP connection failed, or broke during the handshake.
    #[error("connection failed: {0}")]
    Io(#[source] std::io::Error),
    /// The TLS handshake failed: most often the server's certificate is not trusted
    /// ([`rustls::Error::InvalidCertificate`]) or not valid for the URL's host.
    #[cfg(feature = "tls")]
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] rustls::Error),
    /// The server's answer is not a valid WebSocket upgrade.
    #[error("invalid WebSocket upgrade: {0}")]
    Upgrade(#[source] InvalidUpgrade),
    /// The server refused the handshake with an HTTP status (spec/http.md): 400, 401 and
    /// 403 are not retried with the same request; 429 and 503 not before `retry_after`.
    #[error("handshake refused with HTTP {status}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's `Retry-After`, in whole seconds.
        retry_after: Option<Duration>,
    },
    /// The server did not select `mux.v1`.
    #[error("the server did not select the mux.v1 subprotocol")]
    NoSubprotocol,
    /// It took longer than the connect timeout.
    #[error("connect timed out")]
    Timeout,
}

/// How the server's answer broke RFC 6455 (a wrong `Sec-WebSocket-Accept`, a missing
/// `Upgrade` header), as the WebSocket library reported it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct InvalidUpgrade(tokio_tungstenite::tungstenite::Error);

/// A client connection that reconnects. Open sessions with [`Client::open`].
///
/// The connection lives as long as the `Client`: dropping it closes the connection with
/// 1000 and stops reconnecting, and the sessions opened on it end.
pub struct Client {
    current: watch::Receiver<Option<ConnectionHandle>>,
    events: mpsc::Receiver<ClientEvent>,
    incoming: mpsc::Receiver<Session>,
    stop: watch::Sender<bool>,
}

impl Client {
    /// Connects to `url` (`ws://host:port/path`) and keeps the connection up in the
    /// background, reconnecting with backoff when it drops. The first attempt is not retried:
    /// a bad URL or a refused token is reported at once.
    pub async fn connect(url: &str, config: ClientConfig) -> Result<Client, ConnectError> {
        Client::connect_with(url, config, AllowAll).await
    }

    /// Like [`Client::connect`], with an authorizer for sessions the server opens.
    pub async fn connect_with(
        url: &str,
        config: ClientConfig,
        authorizer: impl Authorizer,
    ) -> Result<Client, ConnectError> {
        let (current_tx, current) = watch::channel(None);
        let (events_tx, events) = mpsc::channel(64);
        let (incoming_tx, incoming) = mpsc::channel(64);
        let (stop, stop_rx) = watch::channel(false);
        let authorizer: Arc<dyn Authorizer> = Arc::new(authorizer);
        // The first connection is made here so that a bad URL or a refused token is reported.
        let first = connect_once(url, &config).await?;
        let supervisor = Supervisor {
            url: url.to_owned(),
            config,
            authorizer,
            current: current_tx,
            events: events_tx,
            incoming: incoming_tx,
            stop: stop_rx,
        };
        tokio::spawn(supervisor.run(first));
        let mut client = Client {
            current,
            events,
            incoming,
            stop,
        };
        // Wait until the first connection is published.
        let _ = client.current.wait_for(Option::is_some).await;
        Ok(client)
    }

    /// The live connection, waiting for a reconnect if there is none right now.
    pub async fn connection(&mut self) -> Option<ConnectionHandle> {
        let handle = self
            .current
            .wait_for(|c| c.as_ref().is_some_and(|h| !h.is_closed()))
            .await
            .ok()?;
        handle.clone()
    }

    /// Opens a session of `kind` with per-session credentials `auth`.
    pub async fn open(
        &mut self,
        kind: &str,
        auth: impl Into<Credential>,
    ) -> Result<Session, OpenError> {
        let handle = self.connection().await.ok_or(OpenError::ConnectionClosed)?;
        handle.open(kind, auth).await
    }

    /// Subscribes to `topic` with per-session credentials `auth`, for as long as the client
    /// lives: the [`TopicStream`] opens the topic again after every reconnect, resuming from
    /// its last position (spec/topics.md#resuming). A refusal is reported now.
    pub async fn subscribe(
        &self,
        topic: &str,
        auth: impl Into<Credential>,
    ) -> Result<TopicStream, TopicStreamError> {
        TopicStream::open(self.current.clone(), topic, auth.into(), None).await
    }

    /// Like [`Client::subscribe`], resuming from `position` (one a [`TopicStream`] reported
    /// earlier, for example in a previous process).
    pub async fn subscribe_from(
        &self,
        topic: &str,
        auth: impl Into<Credential>,
        position: StreamPosition,
    ) -> Result<TopicStream, TopicStreamError> {
        TopicStream::open(self.current.clone(), topic, auth.into(), Some(position)).await
    }

    /// The next connection event.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// The next session the server opened (and the authorizer accepted).
    pub async fn accept(&mut self) -> Option<Session> {
        self.incoming.recv().await
    }

    /// Stops reconnecting and closes the connection with 1000.
    pub async fn close(self) {
        let _ = self.stop.send(true);
        let handle = self.current.borrow().clone();
        if let Some(h) = handle {
            h.close(CloseCode::NORMAL, "client closed").await;
        }
    }
}

impl Drop for Client {
    /// Dropping the client stops reconnecting and closes its connection with 1000: nothing
    /// keeps running for a client nobody holds. Its sessions end with the connection.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(handle) = self.current.borrow().as_ref() {
            handle.close_soon(CloseCode::NORMAL, "client dropped");
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_once(url: &str, config: &ClientConfig) -> Result<Ws, ConnectError> {
    let mut request = url
        .into_client_request()
        .map_err(|_| ConnectError::InvalidUrl)?;
    let secure = match request.uri().scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(ConnectError::InvalidUrl),
    };

    let invalid_token = ConnectError::InvalidHeader { field: "token" };
    let mut protocols = SUBPROTOCOL.to_owned();
    if let Some(token) = &config.token {
        if config.token_in_protocol {
            protocols = format!("{SUBPROTOCOL}, {TOKEN_PROTOCOL_PREFIX}{}", token.expose());
        } else {
            let value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| invalid_token)?;
            request.headers_mut().insert("authorization", value);
        }
    }
    let value = HeaderValue::from_str(&protocols)
        .map_err(|_| ConnectError::InvalidHeader { field: "token" })?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", value);
    if let Some(origin) = &config.origin {
        let value = HeaderValue::from_str(origin)
            .map_err(|_| ConnectError::InvalidHeader { field: "origin" })?;
        request.headers_mut().insert("origin", value);
    }
    let ws_config = websocket_config(&config.protocol);
    let connect = handshake(request, ws_config, secure, config);
    let (ws, response) = match tokio::time::timeout(config.connect_timeout, connect).await {
        Ok(result) => result?,
        Err(_) => return Err(ConnectError::Timeout),
    };
    let selected = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok());
    if selected != Some(SUBPROTOCOL) {
        return Err(ConnectError::NoSubprotocol);
    }
    Ok(ws)
}

type Request = tokio_tungstenite::tungstenite::handshake::client::Request;
type Response = tokio_tungstenite::tungstenite::handshake::client::Response;
type WebSocketConfig = tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// TCP, TLS for a `wss://` URL (the application's rustls configuration or the default
/// one), then the WebSocket handshake.
#[cfg(feature = "tls")]
async fn handshake(
    request: Request,
    ws_config: WebSocketConfig,
    secure: bool,
    config: &ClientConfig,
) -> Result<(Ws, Response), ConnectError> {
    let connector = if secure {
        let tls = match &config.tls {
            Some(tls) => tls.clone(),
            None => crate::tls::default_config().map_err(ConnectError::Tls)?,
        };
        tokio_tungstenite::Connector::Rustls(tls)
    } else {
        tokio_tungstenite::Connector::Plain
    };
    tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(ws_config),
        true,
        Some(connector),
    )
    .await
    .map_err(connect_error)
}

/// TCP, then the WebSocket handshake; without the `tls` feature a `wss://` URL is refused
/// before connecting.
#[cfg(not(feature = "tls"))]
async fn handshake(
    request: Request,
    ws_config: WebSocketConfig,
    secure: bool,
    _: &ClientConfig,
) -> Result<(Ws, Response), ConnectError> {
    if secure {
        return Err(ConnectError::TlsNotEnabled);
    }
    tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true)
        .await
        .map_err(connect_error)
}

/// A refused handshake's status and `Retry-After` (delta-seconds; an HTTP date is ignored).
fn refusal(
    response: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
) -> ConnectError {
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    ConnectError::Refused {
        status: response.status().as_u16(),
        retry_after,
    }
}

/// What a failed attempt allows next (spec/http.md, M-HTTP-2 and M-HTTP-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Back off as usual, waiting at least this long.
    After(Duration),
    /// The same request would be refused again: stop.
    Never,
}

fn retry_for(error: &ConnectError) -> Retry {
    match error {
        // 426 and 431 are refusals of the request itself, as 400 (spec/http.md, check 3).
        ConnectError::Refused {
            status: 400 | 401 | 403 | 426 | 431,
            ..
        } => Retry::Never,
        ConnectError::Refused {
            retry_after: Some(wait),
            ..
        } => Retry::After(*wait),
        _ => Retry::After(Duration::ZERO),
    }
}

/// An I/O error, or the TLS failure that tokio-rustls reports as one.
fn io_error(io: std::io::Error) -> ConnectError {
    #[cfg(feature = "tls")]
    if let Some(tls) = crate::tls::tls_error(&io) {
        return ConnectError::Tls(tls.clone());
    }
    ConnectError::Io(io)
}

/// What a failed handshake means. A refusal keeps its status and `Retry-After`; nothing
/// here contains the token.
fn connect_error(e: tokio_tungstenite::tungstenite::Error) -> ConnectError {
    use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError, UrlError};
    match e {
        WsError::Http(response) => refusal(&response),
        // tungstenite checks the answer against the offered subprotocols itself.
        WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(_)) => {
            ConnectError::NoSubprotocol
        }
        WsError::Url(UrlError::TlsFeatureNotEnabled) => ConnectError::TlsNotEnabled,
        WsError::Url(_) | WsError::HttpFormat(_) => ConnectError::InvalidUrl,
        #[cfg(feature = "tls")]
        WsError::Tls(tokio_tungstenite::tungstenite::error::TlsError::Rustls(tls)) => {
            ConnectError::Tls(*tls)
        }
        #[cfg(feature = "tls")]
        WsError::Tls(tokio_tungstenite::tungstenite::error::TlsError::InvalidDnsName) => {
            ConnectError::InvalidUrl
        }
        WsError::Io(io) => io_error(io),
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            ConnectError::Io(std::io::ErrorKind::UnexpectedEof.into())
        }
        other => ConnectError::Upgrade(InvalidUpgrade(other)),
    }
}

fn websocket_config(
    protocol: &mux_proto::Config,
) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    let frame = usize::try_from(protocol.limits.max_frame_size).unwrap_or(usize::MAX);
    let max = mux_proto::MIN_TRANSMIT.max(frame.saturating_add(mux_proto::frame::HEADER_LEN));
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(max.saturating_mul(2))
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

struct Supervisor {
    url: String,
    config: ClientConfig,
    authorizer: Arc<dyn Authorizer>,
    current: watch::Sender<Option<ConnectionHandle>>,
    events: mpsc::Sender<ClientEvent>,
    incoming: mpsc::Sender<Session>,
    stop: watch::Receiver<bool>,
}

impl Supervisor {
    async fn run(mut self, first: Ws) {
        let mut ws = Some(first);
        let mut attempt = 0u32;
        let mut generation = 0u64;
        loop {
            let socket = match ws.take() {
                Some(socket) => socket,
                None => match connect_once(&self.url, &self.config).await {
                    Ok(socket) => socket,
                    Err(e) => {
                        debug!(error = %e, attempt, "connect failed");
                        let at_least = match retry_for(&e) {
                            Retry::After(wait) => wait,
                            Retry::Never => {
                                warn!(error = %e, "refused; not retrying the same request");
                                let _ = self.events.try_send(ClientEvent::GaveUp);
                                return;
                            }
                        };
                        attempt = attempt.saturating_add(1);
                        if !self.wait_before_retry(attempt, at_least).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            generation = generation.saturating_add(1);
            let span = info_span!("mux.conn", side = "client", generation);
            let acceptor = Acceptor {
                principal: None,
                authorizer: self.authorizer.clone(),
                accepted: self.incoming.clone(),
                quotas: None,
            };
            let options = DriverOptions {
                write_timeout: self.config.write_timeout,
                ..DriverOptions::default()
            };
            let (handle, join) = spawn_connection(
                TungsteniteTransport::new(socket),
                Side::Client,
                self.config.protocol.clone(),
                options,
                acceptor,
                span,
            );
            let _ = self.current.send(Some(handle.clone()));
            let _ = self.events.try_send(ClientEvent::Connected {
                attempt,
                generation,
            });
            if generation > 1 {
                self.reopen(&handle);
            }
            attempt = 0;
            // 1006 is never sent: it stands for "lost without a close frame", which the
            // event reports as `None`.
            let code = join
                .await
                .ok()
                .and_then(|o| o.code)
                .filter(|c| *c != CloseCode::ABNORMAL);
            let _ = self.current.send(None);
            let _ = self.events.try_send(ClientEvent::Disconnected { code });
            if *self.stop.borrow() || !self.config.reconnect {
                return;
            }
            attempt = attempt.saturating_add(1);
            if !self.wait_before_retry(attempt, Duration::ZERO).await {
                return;
            }
        }
    }

    /// Applies the re-open policy on a new connection: each listed session is opened in its
    /// own task (an open waits for the server's decision) and handed to the application.
    fn reopen(&self, handle: &ConnectionHandle) {
        for (kind, auth) in self.config.reopen.iter().cloned() {
            let handle = handle.clone();
            let sessions = self.incoming.clone();
            let events = self.events.clone();
            tokio::spawn(async move {
                let outcome = match handle.open(&kind, auth).await {
                    Ok(session) => sessions
                        .send(session)
                        .await
                        .map_err(|_| OpenError::ConnectionClosed),
                    Err(e) => Err(e),
                };
                let _ = events.send(ClientEvent::Reopened { kind, outcome }).await;
            });
        }
    }

    /// Sleeps the jittered backoff for `attempt`, and at least `at_least` (a server's
    /// `Retry-After`); false if the client should stop.
    async fn wait_before_retry(&mut self, attempt: u32, at_least: Duration) -> bool {
        if *self.stop.borrow() || !self.config.reconnect {
            return false;
        }
        if self
            .config
            .backoff
            .max_attempts
            .is_some_and(|max| attempt > max)
        {
            warn!(attempt, "giving up reconnecting");
            let _ = self.events.try_send(ClientEvent::GaveUp);
            return false;
        }
        let delay = self
            .config
            .backoff
            .delay(attempt.saturating_sub(1), random_seed())
            .max(at_least);
        let _ = self
            .events
            .try_send(ClientEvent::Reconnecting { attempt, delay });
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            _ = self.stop.changed() => false,
        }
    }
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

    #[test]
    fn refusals_that_retrying_cannot_fix_are_not_retried_and_retry_after_is_a_floor() {
        let refused = |status, retry_after| ConnectError::Refused {
            status,
            retry_after,
        };
        for status in [400, 401, 403, 426, 431] {
            assert_eq!(retry_for(&refused(status, None)), Retry::Never);
        }
        let wait = Duration::from_secs(3);
        assert_eq!(retry_for(&refused(429, Some(wait))), Retry::After(wait));
        assert_eq!(retry_for(&refused(503, Some(wait))), Retry::After(wait));
        assert_eq!(retry_for(&refused(503, None)), Retry::After(Duration::ZERO));
        assert_eq!(
            retry_for(&ConnectError::Timeout),
            Retry::After(Duration::ZERO)
        );
        let response = tokio_tungstenite::tungstenite::http::Response::builder()
            .status(429)
            .header("retry-after", " 7 ")
            .body(None)
            .unwrap();
        assert!(matches!(
            refusal(&response),
            ConnectError::Refused { status: 429, retry_after: Some(d) } if d == Duration::from_secs(7)
        ));
    }

    #[tokio::test]
    async fn bad_requests_fail_before_any_connection_and_never_show_the_token() {
        let config = ClientConfig::default().reconnect(false);
        for url in ["not a url", "http://127.0.0.1:1/", "ws:///"] {
            assert!(
                matches!(
                    connect_once(url, &config).await,
                    Err(ConnectError::InvalidUrl)
                ),
                "{url}"
            );
        }
        let bad_token = ClientConfig::default().token("canary\n-token");
        let error = connect_once("ws://127.0.0.1:1/", &bad_token)
            .await
            .err()
            .unwrap();
        assert!(matches!(
            error,
            ConnectError::InvalidHeader { field: "token" }
        ));
        assert!(!format!("{error} {error:?}").contains("canary"));
        let bad_origin = ClientConfig::default().origin("https://a\r\nb");
        assert!(matches!(
            connect_once("ws://127.0.0.1:1/", &bad_origin).await,
            Err(ConnectError::InvalidHeader { field: "origin" })
        ));
    }

    /// Without the feature a `wss://` URL is refused before any connection is made (port 1
    /// on loopback has no listener: a connection attempt would fail differently).
    #[cfg(not(feature = "tls"))]
    #[tokio::test]
    async fn wss_without_the_tls_feature_is_refused_before_connecting() {
        let config = ClientConfig::default().reconnect(false);
        assert!(matches!(
            connect_once("wss://127.0.0.1:1/", &config).await,
            Err(ConnectError::TlsNotEnabled)
        ));
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), None);
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(200), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), None);
        assert_eq!(b.delay(2, 0), Duration::ZERO);
        assert_eq!(b.delay(2, u64::MAX), Duration::from_millis(400));
        let mid = b.delay(2, u64::MAX / 2);
        assert!(
            mid > Duration::from_millis(199) && mid < Duration::from_millis(201),
            "{mid:?}"
        );
    }
}

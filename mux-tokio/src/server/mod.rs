//! The WebSocket server: handshake checks before the 101, connection limits and load
//! shedding, one task per connection, and graceful shutdown.

mod fragments;
mod handshake;
mod limits;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mux_proto::{CloseCode, Side};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info, info_span, warn};

pub use handshake::{
    bearer_token, parse_protocols, Origin, OriginPolicy, Protocols, SUBPROTOCOL,
    TOKEN_PROTOCOL_PREFIX,
};

use crate::auth::{Authenticator, Authorizer, HandshakeRequest, Principal};
use crate::driver::{connection, Acceptor, ConnectionHandle, DriverOptions};
use crate::session::Session;
use crate::transport::TungsteniteTransport;
use limits::{Refusal, Registry};

/// Server configuration. Every default is chosen for a browser-facing server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The protocol's limits and timeouts for every connection.
    pub protocol: mux_proto::Config,
    /// Which `Origin` headers are admitted. Default: none (configure it; see [`OriginPolicy`]).
    pub origins: OriginPolicy,
    /// Connections at once, server-wide; beyond it, handshakes get 503. Default 10,000.
    pub max_connections: usize,
    /// Connections at once from one IP; beyond it, 429. Default 64.
    pub max_connections_per_ip: usize,
    /// Connections at once for one principal; beyond it, 429. Default 16.
    pub max_connections_per_principal: usize,
    /// One deadline over the whole handshake (slowloris defence). Default 5 s.
    pub handshake_timeout: Duration,
    /// Deadline for the per-session authorization hook. Default 4 s (inside the protocol's
    /// 5 s authorization deadline, so the hook's own timeout answers first).
    pub authorize_timeout: Duration,
    /// A peer that does not read a write within this long is disconnected. Default 10 s.
    pub write_timeout: Duration,
    /// Accepted sessions waiting for [`Server::accept`]; when full, opens wait and then are
    /// refused with 4003. Default 1,024.
    pub accept_queue: usize,
    /// tungstenite's read buffer per connection. Default 8 KiB.
    pub read_buffer_size: usize,
    /// WebSocket frames one message may have, and control frames amid one; past it the
    /// connection ends (a message of endless empty continuation frames would otherwise
    /// cost work that nothing charges). Default 64: browsers and this crate's client send
    /// each message in one frame.
    pub max_message_frames: u32,
    /// How long a WebSocket message sent in several frames may take to complete, from its
    /// first frame; control frames do not extend it. Past it the connection ends with 1008.
    /// Default 10 s (a whole L-byte message at 6.5 KB/s).
    pub message_deadline: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            protocol: mux_proto::Config::default(),
            origins: OriginPolicy::default(),
            max_connections: 10_000,
            max_connections_per_ip: 64,
            max_connections_per_principal: 16,
            handshake_timeout: Duration::from_secs(5),
            authorize_timeout: Duration::from_secs(4),
            write_timeout: Duration::from_secs(10),
            accept_queue: 1024,
            read_buffer_size: 8 * 1024,
            max_message_frames: fragments::DEFAULT_MAX_FRAGMENTS,
            message_deadline: Duration::from_secs(10),
        }
    }
}

impl ServerConfig {
    /// Builder: the Origin policy.
    pub fn origins(mut self, origins: OriginPolicy) -> Self {
        self.origins = origins;
        self
    }

    /// Builder: the protocol configuration.
    pub fn protocol(mut self, protocol: mux_proto::Config) -> Self {
        self.protocol = protocol;
        self
    }

    /// Builder: connection caps (global, per IP, per principal).
    pub fn connection_limits(mut self, total: usize, per_ip: usize, per_principal: usize) -> Self {
        self.max_connections = total;
        self.max_connections_per_ip = per_ip;
        self.max_connections_per_principal = per_principal;
        self
    }

    /// Builder: the handshake deadline.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Builder: the write deadline for slow peers.
    pub fn write_timeout(mut self, d: Duration) -> Self {
        self.write_timeout = d;
        self
    }

    /// Builder: the authorization hook's deadline.
    pub fn authorize_timeout(mut self, d: Duration) -> Self {
        self.authorize_timeout = d;
        self
    }

    /// Largest WebSocket message accepted: one coalesced transmit (spec/sessions.md).
    fn max_ws_message(&self) -> usize {
        let frame = usize::try_from(self.protocol.limits.max_frame_size).unwrap_or(usize::MAX);
        mux_proto::MIN_TRANSMIT.max(frame.saturating_add(mux_proto::frame::HEADER_LEN))
    }

    pub(crate) fn websocket_config(&self) -> WebSocketConfig {
        let max = self.max_ws_message();
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(0)
            .max_write_buffer_size(max.saturating_mul(2))
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }

    fn driver_options(&self) -> DriverOptions {
        DriverOptions {
            write_timeout: self.write_timeout,
            authorize_timeout: self.authorize_timeout,
        }
    }
}

/// Handshake outcomes, counted by HTTP status.
#[derive(Debug, Default)]
struct Counters {
    upgraded: AtomicU64,
    refused_400: AtomicU64,
    refused_401: AtomicU64,
    refused_403: AtomicU64,
    refused_429: AtomicU64,
    refused_503: AtomicU64,
    handshake_failed: AtomicU64,
}

/// A snapshot of server-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections live now.
    pub connections: usize,
    /// Handshakes that reached 101.
    pub upgraded: u64,
    /// Refused with 400 (no `mux.v1` subprotocol).
    pub refused_400: u64,
    /// Refused with 401 (authentication).
    pub refused_401: u64,
    /// Refused with 403 (Origin).
    pub refused_403: u64,
    /// Refused with 429 (per-IP or per-principal cap).
    pub refused_429: u64,
    /// Shed with 503 (global cap).
    pub refused_503: u64,
    /// Handshakes that failed or timed out.
    pub handshake_failed: u64,
}

struct Shared {
    config: ServerConfig,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    registry: Registry,
    counters: Counters,
    connections: Mutex<HashMap<u64, ConnectionHandle>>,
    next_id: AtomicU64,
    /// Where connections queue accepted sessions; taken when shutdown completes, so that
    /// [`Server::accept`] returns `None` once the last connection has gone.
    accepted: Mutex<Option<mpsc::Sender<Session>>>,
    shutdown: watch::Sender<bool>,
}

/// A running server. Take accepted sessions with [`Server::accept`].
///
/// Dropping it stops the server: the accept loop ends and releases the port, and every
/// connection is closed with 1001 GOING_AWAY (without the grace of
/// [`ServerHandle::shutdown`]). A [`ServerHandle`] does not keep the server running.
pub struct Server {
    local_addr: SocketAddr,
    sessions: mpsc::Receiver<Session>,
    shared: Arc<Shared>,
}

/// A cloneable handle for stats and shutdown.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl Server {
    /// Binds `addr` and starts accepting connections.
    pub async fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        authenticator: impl Authenticator,
        authorizer: impl Authorizer,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        Server::from_listener(listener, config, authenticator, authorizer)
    }

    /// Serves on an already bound listener.
    pub fn from_listener(
        listener: TcpListener,
        config: ServerConfig,
        authenticator: impl Authenticator,
        authorizer: impl Authorizer,
    ) -> std::io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let (accepted, sessions) = mpsc::channel(config.accept_queue.max(1));
        let (shutdown, _) = watch::channel(false);
        let registry = Registry::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.max_connections_per_principal,
        );
        let shared = Arc::new(Shared {
            config,
            authenticator: Arc::new(authenticator),
            authorizer: Arc::new(authorizer),
            registry,
            counters: Counters::default(),
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            accepted: Mutex::new(Some(accepted)),
            shutdown,
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Server {
            local_addr,
            sessions,
            shared,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next session a peer opened and the authorizer granted. `None` after shutdown.
    pub async fn accept(&mut self) -> Option<Session> {
        self.sessions.recv().await
    }

    /// A handle for stats and shutdown.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Nobody can take sessions any more: stop accepting (the accept loop drops the
        // listener, so the port is free again) and end every connection.
        let _ = self.shared.shutdown.send(true);
        for handle in lock(&self.shared.connections).values() {
            handle.close_soon(CloseCode::GOING_AWAY, "server dropped");
        }
        lock(&self.shared.accepted).take();
    }
}

impl ServerHandle {
    /// Server-wide counters.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        ServerStats {
            connections: self.shared.registry.total(),
            upgraded: c.upgraded.load(Ordering::Relaxed),
            refused_400: c.refused_400.load(Ordering::Relaxed),
            refused_401: c.refused_401.load(Ordering::Relaxed),
            refused_403: c.refused_403.load(Ordering::Relaxed),
            refused_429: c.refused_429.load(Ordering::Relaxed),
            refused_503: c.refused_503.load(Ordering::Relaxed),
            handshake_failed: c.handshake_failed.load(Ordering::Relaxed),
        }
    }

    /// Handles of the live connections (for per-connection stats).
    pub fn connections(&self) -> Vec<ConnectionHandle> {
        lock(&self.shared.connections).values().cloned().collect()
    }

    /// Graceful shutdown: stop accepting, send GOAWAY to every connection, let sessions
    /// finish until `grace`, then close what is left with 1001. Returns when all are closed.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shared.shutdown.send(true);
        let handles = self.connections();
        for h in &handles {
            h.go_away().await;
        }
        // A grace too large for the clock means no deadline: wait for the sessions.
        let deadline = tokio::time::Instant::now().checked_add(grace);
        while self.shared.registry.total() > 0
            && deadline.is_none_or(|d| tokio::time::Instant::now() < d)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for h in self.connections() {
            h.close(CloseCode::GOING_AWAY, "server shutdown").await;
        }
        while self.shared.registry.total() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The last sender of the accept queue goes with the last connection task.
        lock(&self.shared.accepted).take();
    }

    /// Distinct IPs and principals in the connection registry (zero when idle).
    pub fn tracked_keys(&self) -> (usize, usize) {
        self.shared.registry.tracked_keys()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match shared.registry.admit(peer.ip()) {
            Ok(permit) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    serve_connection(tcp, peer, shared, permit).await;
                });
            }
            Err(refusal) => {
                let (status, counter) = match refusal {
                    Refusal::Global => ("503 Service Unavailable", &shared.counters.refused_503),
                    Refusal::TooMany => ("429 Too Many Requests", &shared.counters.refused_429),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                crate::observe::handshake_refused(if refusal == Refusal::Global {
                    503
                } else {
                    429
                });
                tokio::spawn(refuse(tcp, status));
            }
        }
    }
    debug!("accept loop stopped");
}

/// Answers a connection that was not admitted, without reading its request.
async fn refuse(mut tcp: TcpStream, status: &'static str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(response.as_bytes())).await;
    let _ = tcp.shutdown().await;
}

#[allow(clippy::result_large_err)]
fn reject(status: StatusCode) -> ErrorResponse {
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = status;
    // spec/http.md: a retryable refusal says when to retry, as the accept loop's 429 and 503
    // already do.
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    response
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    ip_permit: limits::IpPermit,
) {
    // None once shutdown has completed: nothing may be served any more.
    let Some(accepted) = lock(&shared.accepted).clone() else {
        return;
    };
    let conn_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let config = &shared.config;
    let mut outcome: Option<(Principal, limits::PrincipalPermit)> = None;
    let mut refused: Option<StatusCode> = None;
    // tungstenite's callback signature fixes the error type.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let headers = request.headers();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        // Every check answers with a real status before any state is kept (spec/sessions.md).
        // An Origin that is present must be one readable value: an unreadable or repeated
        // header is not a missing one (which `allow_missing` may admit).
        let mut origins = headers.get_all("origin").iter();
        let origin = match (origins.next().map(|v| v.to_str()), origins.next()) {
            (None, _) => Some(None),
            (Some(Ok(value)), None) => Some(Some(value)),
            _ => None,
        };
        let Some(origin) = origin.filter(|o| config.origins.admits(*o)) else {
            refused = Some(StatusCode::FORBIDDEN);
            return Err(reject(StatusCode::FORBIDDEN));
        };
        let protocols = parse_protocols(
            headers
                .get_all("sec-websocket-protocol")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        if !protocols.offers_mux {
            refused = Some(StatusCode::BAD_REQUEST);
            return Err(reject(StatusCode::BAD_REQUEST));
        }
        let token = header("authorization")
            .and_then(bearer_token)
            .or(protocols.token);
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let hs = HandshakeRequest {
            peer,
            path,
            origin,
            token,
        };
        let principal = match shared.authenticator.authenticate(&hs) {
            Ok(p) => p,
            Err(_) => {
                refused = Some(StatusCode::UNAUTHORIZED);
                return Err(reject(StatusCode::UNAUTHORIZED));
            }
        };
        let Ok(permit) = shared.registry.admit_principal(&principal.id) else {
            refused = Some(StatusCode::TOO_MANY_REQUESTS);
            return Err(reject(StatusCode::TOO_MANY_REQUESTS));
        };
        response.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        outcome = Some((principal, permit));
        Ok(response)
    };
    // Boxed, so its state is freed once the handshake is done instead of staying part of
    // this task's future for the connection's whole life (memory at rest, P7).
    let handshake = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        fragments::FragmentCapped::new(tcp, config.max_message_frames, config.message_deadline),
        callback,
        Some(config.websocket_config()),
    ));
    let ws = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(_)) | Err(_) => {
            let counter = match refused {
                Some(StatusCode::FORBIDDEN) => &shared.counters.refused_403,
                Some(StatusCode::BAD_REQUEST) => &shared.counters.refused_400,
                Some(StatusCode::UNAUTHORIZED) => &shared.counters.refused_401,
                Some(StatusCode::TOO_MANY_REQUESTS) => &shared.counters.refused_429,
                _ => &shared.counters.handshake_failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            crate::observe::handshake_refused(refused.map_or(0, |s| s.as_u16()));
            debug!(%peer, status = ?refused, "handshake refused");
            return;
        }
    };
    let Some((principal, principal_permit)) = outcome else {
        return;
    };
    shared.counters.upgraded.fetch_add(1, Ordering::Relaxed);
    crate::observe::connection_opened();
    let span = info_span!("mux.conn", conn_id, %peer, principal = %principal.id);
    let acceptor = Acceptor {
        principal: Some(principal),
        authorizer: shared.authorizer.clone(),
        accepted,
    };
    // The driver runs in this task: one task per connection.
    let (handle, driver) = connection(
        TungsteniteTransport::new(ws),
        Side::Server,
        config.protocol.clone(),
        config.driver_options(),
        acceptor,
        span.clone(),
    );
    lock(&shared.connections).insert(conn_id, handle.clone());
    // A server that is already shutting down tells late connections at once.
    if *shared.shutdown.borrow() {
        handle.go_away().await;
    }
    let outcome = driver.await;
    lock(&shared.connections).remove(&conn_id);
    crate::observe::connection_closed(outcome.code);
    span.in_scope(|| info!(code = ?outcome.code, messages_in = outcome.stats.messages_received, messages_out = outcome.stats.messages_sent, "connection ended"));
    drop(principal_permit);
    drop(ip_permit);
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

    /// Threat catalogue row 32: knobs with no trip point of their own reach tungstenite's
    /// configuration (the others are tripped over loopback in tests/effective_config.rs).
    #[test]
    fn websocket_config_follows_the_server_config() {
        let mut protocol = mux_proto::Config::default();
        protocol.limits.max_frame_size = 100_000;
        let config = ServerConfig {
            read_buffer_size: 12_345,
            ..ServerConfig::default()
        }
        .protocol(protocol);
        let ws = config.websocket_config();
        assert_eq!(ws.read_buffer_size, 12_345);
        // L = max(65,536, MAX_FRAME_SIZE + 10): the largest message and frame accepted.
        assert_eq!(ws.max_message_size, Some(100_010));
        assert_eq!(ws.max_frame_size, Some(100_010));
        assert_eq!(ws.max_write_buffer_size, 200_020);
        let small = ServerConfig::default().websocket_config();
        assert_eq!(small.max_message_size, Some(65_546));
        assert_eq!(small.read_buffer_size, 8 * 1024);
    }
}

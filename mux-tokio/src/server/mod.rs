//! The WebSocket server: handshake checks before the 101, connection limits and load
//! shedding, one task per connection, and graceful shutdown.

#[cfg(feature = "axum")]
mod axum_upgrade;
mod forwarded;
mod fragments;
mod handshake;
mod head;
mod limits;
mod preauth;
mod rate;
mod serve;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mux_proto::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use handshake::{
    bearer_token, parse_protocols, Origin, OriginPolicy, Protocols, SUBPROTOCOL,
    TOKEN_PROTOCOL_PREFIX,
};

pub use forwarded::{ForwardedHeader, IpCidr};
pub use rate::HandshakeRate;
pub(crate) use rate::KeyedRate;

use crate::auth::{Authenticator, Authorizer};
use crate::budget::{Budget, BudgetStats};
use crate::driver::{ConnectionHandle, DriverOptions};
use crate::quota::QuotaPolicy;
use crate::session::Session;
use limits::Registry;
use preauth::PreAuth;

/// The upgrade head parser, for the fuzz body: (target, header count, accept key).
#[cfg(feature = "fuzzing")]
pub(crate) fn parse_head(bytes: &[u8]) -> Result<(String, usize, String), ()> {
    head::parse(bytes)
        .map(|r| (r.target, r.headers.len(), r.accept_key))
        .map_err(|_| ())
}

#[cfg(feature = "fuzzing")]
pub(crate) use head::MAX_HEADERS;

/// Source addresses whose handshake rate is remembered at once (about 4 MiB at most).
const RATE_KEYS: usize = 65_536;

/// How often the server forgets the handshake-rate and quota keys that no longer limit
/// anyone ([`Shared::housekeep`]).
const HOUSEKEEPING: Duration = rate::SWEEP_EVERY;

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
    /// A peer that does not read a write within this long is disconnected; so is one the
    /// memory budget has kept from reading this long (a paused reader cannot see its peer
    /// leave). Default 10 s.
    pub write_timeout: Duration,
    /// Accepted sessions waiting for [`Server::accept`]; when full, opens wait and then are
    /// refused with 4003. Default 1,024.
    pub accept_queue: usize,
    /// tungstenite's read buffer per connection, which it keeps for the connection's life.
    /// Default 1 KiB: under it the server reads a burst in 64 KiB gulps into a buffer that
    /// is freed when the burst ends, so an idle connection holds only this (P7).
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
    /// Bytes the server may hold for its peers, all connections and handshakes together:
    /// read and transmit buffers, queued and half-received messages, partial WebSocket
    /// messages, request heads, and a fixed cost per connection and per session. Nearing
    /// it, the server acts in order (see [`Pressure`](crate::Pressure)): expensive
    /// connections stop reading at 75 %, idle buffers are released at 85 %, handshakes are
    /// refused with 503 at 90 %, and at 100 % the connections holding the most memory per
    /// byte of progress are closed with 1013 TRY_AGAIN_LATER. Default 256 MiB: 10,000 idle
    /// connections (the default cap) are charged about 160 MiB, which leaves 96 MiB of
    /// buffers, 1,500 full 64 KiB receive windows.
    pub memory_budget: usize,
    /// Connections still in their handshake at once. When all places are taken the oldest
    /// unfinished handshake is dropped for the newest, so sockets that trickle or withhold
    /// their request (a slowloris, from any number of addresses) cannot keep honest clients
    /// out, and never count against authenticated connections. Default 1,024.
    pub max_unauthenticated: usize,
    /// Largest request head read (431 past it), also the memory an unauthenticated
    /// handshake is charged. Default 8 KiB, as nginx's `large_client_header_buffers`.
    pub max_request_head: usize,
    /// Handshakes per second from one IP address, with a burst; past it, 429 with
    /// `Retry-After`, before anything is read. Default 32/s, bursts of 128.
    pub handshake_rate_per_ip: HandshakeRate,
    /// Quotas per principal that outlive a connection: handshakes (429 past it), session
    /// opens (refused with 4002) and messages (reading waits), summed over all of the
    /// principal's connections, in memory or in a shared [`QuotaStore`](crate::quota::QuotaStore).
    /// Default: handshakes 16/s with bursts of 64, in memory.
    pub quotas: QuotaPolicy,
    /// Reverse proxies whose word on the client's address is taken: only from a TCP peer
    /// in one of these blocks is the client read from `Forwarded` or `X-Forwarded-For`
    /// (the rightmost hop that is not itself a trusted proxy), and then the per-IP cap,
    /// the handshake rate, [`HandshakeRequest::peer`](crate::HandshakeRequest) and the
    /// logs use it. A trusted peer whose headers name no readable client is answered 400.
    /// Default: none (every peer is the client).
    pub trusted_proxies: Vec<IpCidr>,
    /// The header the trusted proxies write the client into; the other is ignored (a
    /// proxy passes on what the client put in a header it does not write itself).
    /// Default `X-Forwarded-For` (nginx, HAProxy, AWS ALB, Google Cloud).
    pub forwarded_header: ForwardedHeader,
    /// Answer `GET /healthz` (200 while the process serves) and `GET /readyz` (503 while
    /// draining, shutting down or refusing handshakes for memory) on the server's own port,
    /// before any upgrade: for Kubernetes probes and load balancers. Default on.
    pub health_checks: bool,
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
            read_buffer_size: 1024,
            max_message_frames: fragments::DEFAULT_MAX_FRAGMENTS,
            message_deadline: Duration::from_secs(10),
            memory_budget: 256 * 1024 * 1024,
            max_unauthenticated: 1024,
            max_request_head: 8 * 1024,
            handshake_rate_per_ip: HandshakeRate {
                per_second: 32,
                burst: 128,
            },
            quotas: QuotaPolicy::default(),
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::default(),
            health_checks: true,
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

    /// Builder: handshakes per second from one IP address (see
    /// [`ServerConfig::handshake_rate_per_ip`]).
    pub fn handshake_rate(mut self, rate: HandshakeRate) -> Self {
        self.handshake_rate_per_ip = rate;
        self
    }

    /// Builder: trusted reverse proxies, as addresses or CIDR blocks (`10.0.0.0/8`,
    /// `::1`); entries that do not parse are ignored (see [`ServerConfig::trusted_proxies`]).
    pub fn trusted_proxies<'a>(mut self, proxies: impl IntoIterator<Item = &'a str>) -> Self {
        self.trusted_proxies = proxies.into_iter().filter_map(IpCidr::parse).collect();
        self
    }

    /// Builder: per-principal quotas (see [`ServerConfig::quotas`]).
    pub fn quotas(mut self, quotas: QuotaPolicy) -> Self {
        self.quotas = quotas;
        self
    }

    /// Builder: the memory budget (see [`ServerConfig::memory_budget`]).
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }

    fn driver_options(&self) -> DriverOptions {
        DriverOptions {
            write_timeout: self.write_timeout,
            authorize_timeout: self.authorize_timeout,
            ..DriverOptions::default()
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
    handshakes_evicted: AtomicU64,
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
    /// Handshakes that failed or timed out (a malformed or oversized head included).
    pub handshake_failed: u64,
    /// Unfinished handshakes dropped to make room for newer ones.
    pub handshakes_evicted: u64,
    /// Connections in their handshake now.
    pub unauthenticated: usize,
    /// Source addresses whose handshake rate is remembered now: those whose burst has not
    /// come back whole since their last handshake. Each is forgotten within about a second
    /// of its burst coming back, so a flood from many addresses leaves nothing behind.
    pub rate_limited_sources: usize,
    /// The memory budget's state.
    pub memory: BudgetStats,
}

struct Shared {
    config: ServerConfig,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    registry: Registry,
    budget: Budget,
    preauth: PreAuth,
    handshake_rate: Mutex<KeyedRate<IpAddr>>,
    counters: Counters,
    /// Live connections, with the principal each belongs to.
    connections: Mutex<HashMap<u64, (String, ConnectionHandle)>>,
    next_id: AtomicU64,
    /// Where connections queue accepted sessions; taken when shutdown completes, so that
    /// [`Server::accept`] returns `None` once the last connection has gone.
    accepted: Mutex<Option<mpsc::Sender<Session>>>,
    shutdown: watch::Sender<bool>,
    /// Told to drain: `/readyz` says no and every connection has had GOAWAY.
    draining: std::sync::atomic::AtomicBool,
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
        let server = Server::build(local_addr, config, authenticator, authorizer);
        tokio::spawn(serve::accept_loop(listener, server.shared.clone()));
        Ok(server)
    }

    /// A server with no listener of its own: connections come from streams the application
    /// accepted ([`ServerHandle::serve`], for TLS) or from axum
    /// (`ServerHandle::upgrade_axum`, feature `axum`), with every check of a bound server.
    /// Its [`local_addr`](Server::local_addr) is `0.0.0.0:0`.
    pub fn detached(
        config: ServerConfig,
        authenticator: impl Authenticator,
        authorizer: impl Authorizer,
    ) -> Server {
        let unbound = SocketAddr::from(([0, 0, 0, 0], 0));
        let server = Server::build(unbound, config, authenticator, authorizer);
        // A bound server's accept loop does the housekeeping; a detached one has a task for
        // it when made inside a runtime (outside one, its tables are swept as they are used).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(housekeeping(Arc::downgrade(&server.shared)));
        }
        server
    }

    fn build(
        local_addr: SocketAddr,
        config: ServerConfig,
        authenticator: impl Authenticator,
        authorizer: impl Authorizer,
    ) -> Server {
        let (accepted, sessions) = mpsc::channel(config.accept_queue.max(1));
        let (shutdown, _) = watch::channel(false);
        let registry = Registry::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.max_connections_per_principal,
        );
        let shared = Arc::new(Shared {
            budget: Budget::new(config.memory_budget),
            preauth: PreAuth::new(config.max_unauthenticated),
            handshake_rate: Mutex::new(KeyedRate::new(config.handshake_rate_per_ip, RATE_KEYS)),
            config,
            authenticator: Arc::new(authenticator),
            authorizer: Arc::new(authorizer),
            registry,
            counters: Counters::default(),
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            accepted: Mutex::new(Some(accepted)),
            shutdown,
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        Server {
            local_addr,
            sessions,
            shared,
        }
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

impl Shared {
    /// Forgets what no longer limits anyone: the sources and principals whose handshake
    /// rate and quotas are whole again (a fresh key would be admitted the same way), with
    /// the tables' capacity. Called about once a second (the accept loop, or
    /// [`housekeeping`] for a detached server), so that memory a burst of many sources made
    /// the server keep goes back even if no handshake follows it.
    fn housekeep(&self) {
        lock(&self.handshake_rate).sweep(tokio::time::Instant::now());
        self.config.quotas.store.sweep();
    }

    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.config.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// Why `/readyz` says no, if it does.
    fn not_ready(&self) -> Option<&'static str> {
        if *self.shutdown.borrow() || self.draining.load(Ordering::Relaxed) {
            Some("draining")
        } else if self.budget.pressure() >= crate::Pressure::RefuseHandshakes {
            Some("overloaded")
        } else {
            None
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Nobody can take sessions any more: stop accepting (the accept loop drops the
        // listener, so the port is free again) and end every connection.
        let _ = self.shared.shutdown.send(true);
        for (_, handle) in lock(&self.shared.connections).values() {
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
            handshakes_evicted: c.handshakes_evicted.load(Ordering::Relaxed),
            unauthenticated: self.shared.preauth.len(),
            rate_limited_sources: lock(&self.shared.handshake_rate).len(),
            memory: self.shared.budget.stats(),
        }
    }

    /// Starts draining for a rolling restart: `/readyz` answers 503 from now on (so the
    /// load balancer stops sending new clients), every connection gets GOAWAY (clients
    /// reconnect elsewhere after their sessions finish), and connections still arriving
    /// are served but told to go away at once. Unlike [`ServerHandle::shutdown`] it
    /// neither stops accepting nor closes anything.
    pub async fn drain(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        for h in self.connections() {
            h.go_away().await;
        }
    }

    /// Whether `/readyz` would say yes now.
    pub fn is_ready(&self) -> bool {
        self.shared.not_ready().is_none()
    }

    /// Serves a connection the application accepted itself (a TLS stream from
    /// tokio-rustls, a Unix socket) with every check of the server's own listener:
    /// admission, the handshake deadline, Origin, subprotocol, authentication, caps and
    /// the memory budget. `peer` is the client's address, for the per-IP limits. Returns
    /// when the connection ends; spawn it.
    pub async fn serve<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        serve::serve_accepted(stream, peer, self.shared.clone()).await;
    }

    /// Handles of the live connections (for per-connection stats).
    pub fn connections(&self) -> Vec<ConnectionHandle> {
        lock(&self.shared.connections)
            .values()
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// Handles of the live connections of one principal: to see how many it has, revoke
    /// every session it holds ([`ConnectionHandle::revoke_sessions`], when its rights
    /// change) or close them (when it logs out or is banned).
    pub fn connections_of(&self, principal_id: &str) -> Vec<ConnectionHandle> {
        lock(&self.shared.connections)
            .values()
            .filter(|(p, _)| p == principal_id)
            .map(|(_, h)| h.clone())
            .collect()
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

/// A detached server's housekeeping, until the server is gone.
async fn housekeeping(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            break;
        };
        shared.housekeep();
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
        assert_eq!(small.read_buffer_size, 1024);
    }
}

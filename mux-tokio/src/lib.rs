//! Tokio driver for `mux-proto`: secure session multiplexing over WebSocket.
//!
//! - [`Server`]: accepts WebSocket connections on a TCP listener with every check before the
//!   101 (exact Origin allowlist → 403, `mux.v1` subprotocol → 400, authentication → 401,
//!   per-IP and per-principal caps → 429, global cap → 503, one handshake deadline), runs one
//!   task per connection, authorizes every session through an async hook under a deadline,
//!   and yields accepted [`Session`]s.
//! - [`Client`]: connects, opens sessions, reconnects with exponential backoff and full jitter.
//! - [`Session`]: `send(..).await` waits for credit (real backpressure); `recv().await`
//!   returns credit as the application reads; `Stream` of messages.
//!
//! The driver runs over any [`Transport`] (a `Stream` + `Sink` of binary WebSocket
//! messages), so it works over axum's `WebSocket` too; tungstenite types stay inside.
//! With the `tls` feature the client connects to `wss://` URLs (rustls; see
//! [`ClientConfig`]).
//!
//! A server on a free loopback port, a client, one session, one echo:
//!
//! ```
//! use bytes::Bytes;
//! use mux_tokio::{AllowAll, Client, ClientConfig, OriginPolicy, Server, ServerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Services send no Origin header; a browser-facing server lists its origins instead.
//! let config = ServerConfig::default().origins(OriginPolicy::default().allow_missing(true));
//! // AllowAll authenticates and authorizes everyone: replace both in a real server.
//! let mut server = Server::bind("127.0.0.1:0".parse()?, config, AllowAll, AllowAll).await?;
//! let url = format!("ws://{}/", server.local_addr());
//! tokio::spawn(async move {
//!     while let Some(mut session) = server.accept().await {
//!         tokio::spawn(async move {
//!             // Echo until the peer finishes; `send` waits for credit.
//!             while let Some(message) = session.recv().await {
//!                 if session.send(message).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//! });
//!
//! let mut client = Client::connect(&url, ClientConfig::default()).await?;
//! let mut session = client.open("echo", Bytes::new()).await?;
//! session.send(Bytes::from_static(b"hello")).await?;
//! assert_eq!(session.recv().await.as_deref(), Some(&b"hello"[..]));
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod auth;
#[cfg(feature = "axum")]
pub mod axum;
mod budget;
mod client;
mod driver;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod observe;
pub mod quota;
mod read_ahead;
mod replies;
mod server;
mod session;
mod signal;
mod sparse;
mod tls;
pub mod topic;
mod transport;

/// The protocol crate this driver runs, for the types not re-exported at the root (frames,
/// [`proto::Connection`], its own errors).
pub use mux_proto as proto;
/// The protocol types that appear in this crate's API, so an application needs no direct
/// dependency on `mux-proto` (and cannot end up with a second version of it).
pub use mux_proto::{
    CloseCode, Config, ConnectionStats, Credential, Grant, Limits, Permissions, RateLimits,
    RatePolicy, SessionId, SessionStats, Timeouts,
};

/// The rustls version the client's TLS configuration is built with (feature `tls`).
#[cfg(feature = "tls")]
pub use rustls;

pub use auth::{
    authenticate_async, AllowAll, AsyncAuthenticator, AuthError, AuthenticateFuture, Authenticator,
    AuthorizeFuture, Authorizer, HandshakeRequest, Principal, Rejection, Token,
};
pub use budget::{BudgetStats, Pressure};
pub use client::{Backoff, Client, ClientConfig, ClientEvent, ConnectError, InvalidUpgrade};
pub use driver::{ConnectionHandle, ConnectionOutcome};
pub use error::{OpenError, SendError, SessionClosed, TrySendError};
pub use server::{
    bearer_token, parse_protocols, ForwardedHeader, HandshakeRate, IpCidr, Origin, OriginPolicy,
    Protocols, Server, ServerConfig, ServerHandle, ServerStats, SUBPROTOCOL, TOKEN_PROTOCOL_PREFIX,
};
pub use session::{OpenInfo, Session, SessionReceiver, SessionSender};
pub use signal::{shutdown_signal, ShutdownSignal};
pub use transport::{
    Transport, TransportError, TransportErrorKind, TungsteniteTransport, WsMessage,
};

/// Runs the protocol over an already upgraded WebSocket (for example axum's, through an
/// adapter implementing [`Transport`]), as the server side, and returns the connection handle
/// and a join handle for its outcome.
pub fn serve_transport<T: Transport>(
    transport: T,
    config: mux_proto::Config,
    principal: Principal,
    authorizer: impl Authorizer,
    accepted: tokio::sync::mpsc::Sender<Session>,
) -> (ConnectionHandle, tokio::task::JoinHandle<ConnectionOutcome>) {
    let acceptor = driver::Acceptor {
        principal: Some(std::sync::Arc::new(principal)),
        authorizer: std::sync::Arc::new(authorizer),
        accepted,
        quotas: None,
    };
    driver::spawn_connection(
        transport,
        mux_proto::Side::Server,
        config,
        driver::DriverOptions::default(),
        acceptor,
        tracing::info_span!("mux.conn"),
    )
}

/// Runs the protocol over an already open WebSocket as the client side: the counterpart of
/// [`serve_transport`] for custom transports and in-memory tests. There is no reconnect
/// ([`Client`] adds that over real sockets); sessions the server opens are run through
/// `authorizer` and handed to `incoming`.
pub fn connect_transport<T: Transport>(
    transport: T,
    config: mux_proto::Config,
    authorizer: impl Authorizer,
    incoming: tokio::sync::mpsc::Sender<Session>,
) -> (ConnectionHandle, tokio::task::JoinHandle<ConnectionOutcome>) {
    let acceptor = driver::Acceptor {
        principal: None,
        authorizer: std::sync::Arc::new(authorizer),
        accepted: incoming,
        quotas: None,
    };
    driver::spawn_connection(
        transport,
        mux_proto::Side::Client,
        config,
        driver::DriverOptions::default(),
        acceptor,
        tracing::info_span!("mux.conn", side = "client"),
    )
}

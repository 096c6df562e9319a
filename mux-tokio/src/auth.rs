//! Authentication at the handshake and authorization per session: traits the application
//! implements.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use mux_proto::{CloseCode, Grant};
use tokio_tungstenite::tungstenite::http::HeaderMap;

use crate::session::OpenInfo;

/// A bearer credential. Its `Debug` and `Display` never show it, so it cannot end up in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token string.
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }

    /// The secret value; use it only to verify.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Who a connection belongs to, as the [`Authenticator`] decided.
#[derive(Clone)]
pub struct Principal {
    /// A stable identifier, used for per-principal connection limits and in logs.
    pub id: String,
    /// Anything else the application wants to carry (roles, tenant), for its authorizer.
    pub data: Arc<dyn Any + Send + Sync>,
}

impl Principal {
    /// A principal with an ID and no extra data.
    pub fn new(id: impl Into<String>) -> Self {
        Principal {
            id: id.into(),
            data: Arc::new(()),
        }
    }

    /// A principal carrying `data`, which the authorizer can read back with [`Principal::data`].
    pub fn with_data<T: Any + Send + Sync>(id: impl Into<String>, data: T) -> Self {
        Principal {
            id: id.into(),
            data: Arc::new(data),
        }
    }

    /// The application data, if it is a `T`.
    pub fn data<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.data.downcast_ref::<T>()
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What the handshake offers the authenticator. Its `Debug` shows the path without its
/// query (where a misconfigured client may have put a token), header names without their
/// values (cookies, `Authorization`), and never the token.
#[derive(Clone)]
pub struct HandshakeRequest {
    /// The client's address: the TCP peer, or the address a trusted proxy reported.
    pub peer: SocketAddr,
    /// The request path and query (never put tokens in the query: it ends up in logs).
    pub path: String,
    /// The `Origin` header, already checked against the allowlist.
    pub origin: Option<String>,
    /// The bearer token, from `Authorization: Bearer …` or a `Sec-WebSocket-Protocol` entry
    /// `bearer.…` (browsers cannot set headers on a WebSocket).
    pub token: Option<Token>,
    /// Every request header, for cookie sessions and the like.
    pub headers: HeaderMap,
}

impl fmt::Debug for HandshakeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // spec/sessions.md#security-considerations: credentials in URLs end up in logs, so
        // the query is never printed.
        let path = match self.path.split_once('?') {
            Some((path, _)) => format!("{path}?<redacted>"),
            None => self.path.clone(),
        };
        f.debug_struct("HandshakeRequest")
            .field("peer", &self.peer)
            .field("path", &path)
            .field("origin", &self.origin)
            .field("token", &self.token)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why authentication failed. Every variant is answered alike, with HTTP 401 and no body
/// (spec/http.md): the peer is not told which check failed. The variant is for the server's
/// own logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The request carried no credentials.
    #[error("no credentials")]
    Missing,
    /// The credentials are not valid: unknown, malformed, or their signature does not check.
    #[error("invalid credentials")]
    Invalid,
    /// The credentials were valid but have expired (or were revoked).
    #[error("expired credentials")]
    Expired,
    /// Any other refusal, with a reason for the server's logs; never sent to the peer, and
    /// never a place for the credential itself.
    #[error("unauthorized: {reason}")]
    Other {
        /// What went wrong.
        reason: String,
    },
}

impl AuthError {
    /// A refusal with a reason for the logs (see [`AuthError::Other`]).
    pub fn other(reason: impl Into<String>) -> Self {
        AuthError::Other {
            reason: reason.into(),
        }
    }

    /// The HTTP status the handshake is answered with: 401 for every variant.
    pub fn status(&self) -> u16 {
        401
    }
}

/// A boxed authentication future.
pub type AuthenticateFuture = Pin<Box<dyn Future<Output = Result<Principal, AuthError>> + Send>>;

/// Authenticates a connection during the WebSocket handshake, before the 101.
///
/// It runs under the server's one handshake deadline (`ServerConfig::handshake_timeout`);
/// a decision still pending then is answered 503 with `Retry-After`. A plain function or
/// closure `Fn(&HandshakeRequest) -> Result<Principal, AuthError>` is an authenticator (for
/// a signed token checked in place); [`authenticate_async`] wraps an async one (a cookie
/// session or a database lookup).
pub trait Authenticator: Send + Sync + 'static {
    /// The principal for this request, or an error (answered with HTTP 401).
    fn authenticate(&self, request: &HandshakeRequest) -> AuthenticateFuture;
}

impl<F> Authenticator for F
where
    F: Fn(&HandshakeRequest) -> Result<Principal, AuthError> + Send + Sync + 'static,
{
    fn authenticate(&self, request: &HandshakeRequest) -> AuthenticateFuture {
        Box::pin(std::future::ready(self(request)))
    }
}

/// An async authenticator: see [`authenticate_async`].
#[derive(Debug, Clone, Copy)]
pub struct AsyncAuthenticator<F>(F);

/// Makes an authenticator of an async function of the request (owned, so the future may
/// keep it across awaits):
/// `authenticate_async(|request: HandshakeRequest| async move { lookup(request).await })`.
pub fn authenticate_async<F, Fut>(f: F) -> AsyncAuthenticator<F>
where
    F: Fn(HandshakeRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Principal, AuthError>> + Send + 'static,
{
    AsyncAuthenticator(f)
}

impl<F, Fut> Authenticator for AsyncAuthenticator<F>
where
    F: Fn(HandshakeRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Principal, AuthError>> + Send + 'static,
{
    fn authenticate(&self, request: &HandshakeRequest) -> AuthenticateFuture {
        Box::pin((self.0)(request.clone()))
    }
}

/// A refused session: the OPEN is answered with RESET and this code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The code: 4000 UNAUTHORIZED, 4001 FORBIDDEN, 4002 RATE_LIMITED, …
    pub code: CloseCode,
    /// A short reason for the peer; never put secrets here.
    pub reason: String,
}

impl Rejection {
    /// Refuses with 4001 FORBIDDEN.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Rejection {
            code: CloseCode::FORBIDDEN,
            reason: reason.into(),
        }
    }

    /// Refuses with 4000 UNAUTHORIZED.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Rejection {
            code: CloseCode::UNAUTHORIZED,
            reason: reason.into(),
        }
    }
}

/// A boxed authorization future.
pub type AuthorizeFuture = Pin<Box<dyn Future<Output = Result<Grant, Rejection>> + Send>>;

/// Decides, for every session a peer opens, whether that principal may have it and with
/// which permissions and limits. Runs under a deadline; a slow decision refuses with 4006.
///
/// Any `Fn(Principal, OpenInfo) -> impl Future<Output = Result<Grant, Rejection>>` is an
/// authorizer, an `async fn` or a closure alike. It gets both by value (the driver makes
/// them for this one decision), so the future can keep them without cloning:
///
/// ```
/// use mux_tokio::{Grant, OpenInfo, Principal, Rejection};
///
/// let authorizer = |principal: Principal, open: OpenInfo| async move {
///     match open.kind.as_str() {
///         "admin" if principal.id != "root" => Err(Rejection::forbidden("admins only")),
///         _ => Ok(Grant::full()),
///     }
/// };
/// # fn is_authorizer(_: impl mux_tokio::Authorizer) {}
/// # is_authorizer(authorizer);
/// ```
pub trait Authorizer: Send + Sync + 'static {
    /// The grant for `open`, or a rejection.
    fn authorize(&self, principal: Principal, open: OpenInfo) -> AuthorizeFuture;
}

impl<F, Fut> Authorizer for F
where
    F: Fn(Principal, OpenInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Grant, Rejection>> + Send + 'static,
{
    fn authorize(&self, principal: Principal, open: OpenInfo) -> AuthorizeFuture {
        Box::pin(self(principal, open))
    }
}

/// Grants every session in full: for tests and demos only.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _: Principal, _: OpenInfo) -> AuthorizeFuture {
        Box::pin(async { Ok(Grant::full()) })
    }
}

impl Authenticator for AllowAll {
    fn authenticate(&self, request: &HandshakeRequest) -> AuthenticateFuture {
        Box::pin(std::future::ready(Ok(Principal::new(
            request.peer.ip().to_string(),
        ))))
    }
}

//! Helpers for the multi-node tests: bounded waits and the tests' authenticator. Every
//! wait fails the test if its state is never reached; none stands in for synchronisation.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use mux_tokio::{AuthError, HandshakeRequest, Principal};

/// The bound on every wait: far above what anything legitimate takes on loopback.
pub const WAIT: Duration = Duration::from_secs(15);

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Polls `condition` every few milliseconds until it holds, for at most [`WAIT`]: for state
/// with no event to await (Redis's own, a counter).
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The token `user:<name>` authenticates `<name>`.
pub fn authenticate(request: &HandshakeRequest) -> Result<Principal, AuthError> {
    let token = request.token.as_ref().map(|t| t.expose()).unwrap_or("");
    token
        .strip_prefix("user:")
        .map(Principal::new)
        .ok_or(AuthError::Missing)
}

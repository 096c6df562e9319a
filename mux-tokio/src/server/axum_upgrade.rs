//! The server's checks for an upgrade that axum received (feature `axum`): the same
//! admission (memory budget, handshake rate, caps), Origin, `mux.v1`, async authentication
//! under the handshake deadline, quotas, trusted proxies and limits as [`Server`](super::Server)'s
//! own listener, answered with the same statuses; then the connection runs over axum's
//! WebSocket. What axum's socket does not let the server see is the raw frame stream, so
//! the frames-per-message cap and the fragmented-message deadline of the plain server do
//! not apply here (the message size cap L does).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::head::UpgradeRequest;
use super::serve::{admit, check_request_for, forwarded_client_for, run_transport, whole_seconds};
use super::{ServerHandle, SUBPROTOCOL};
use crate::axum::AxumTransport;
use crate::budget::CONNECTION_STATE;
use crate::quota::{QuotaDecision, QuotaKey, QuotaKind};

/// A refusal as axum answers it, with `Retry-After` where spec/http.md asks for one.
fn refusal(status: u16, retry_after: u64) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = code.into_response();
    if status == 429 || status == 503 {
        if let Ok(value) = HeaderValue::from_str(&retry_after.max(1).to_string()) {
            response.headers_mut().insert("retry-after", value);
        }
    }
    response
}

impl ServerHandle {
    /// Upgrades a request axum routed here, with every check of the server's own listener
    /// (spec/http.md's order and statuses). `peer` is the TCP peer (axum's
    /// `ConnectInfo<SocketAddr>`); behind trusted proxies the client is read from the
    /// headers as the server does. Sessions go to this server's [`Server::accept`](super::Server::accept).
    ///
    /// ```ignore
    /// async fn mux(ws: WebSocketUpgrade, ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ///              headers: HeaderMap, uri: Uri, State(server): State<ServerHandle>) -> Response {
    ///     server.upgrade_axum(ws, peer, &headers, &uri).await
    /// }
    /// ```
    pub async fn upgrade_axum(
        &self,
        ws: WebSocketUpgrade,
        peer: SocketAddr,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Response {
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let Some(accepted) = super::lock(&shared.accepted).clone() else {
            return refusal(503, 1);
        };
        let ip_permit = match admit(&shared, peer) {
            Ok(permit) => permit,
            Err((status, retry_after)) => return refusal(status, retry_after),
        };
        let config = &shared.config;
        let request = UpgradeRequest {
            target: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            headers: headers.clone(),
            accept_key: String::new(),
        };
        let count = |status: u16| {
            let counter = match status {
                400 => &counters.refused_400,
                401 => &counters.refused_401,
                403 => &counters.refused_403,
                429 => &counters.refused_429,
                503 => &counters.refused_503,
                _ => &counters.handshake_failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            crate::observe::handshake_refused(status);
        };
        let (client, forwarded_permit) = match forwarded_client_for(&request, peer, &shared) {
            Ok(client) => client,
            Err((status, retry_after)) => {
                count(status);
                return refusal(status, retry_after);
            }
        };
        let hs = match check_request_for(&request, client, &shared) {
            Ok(hs) => hs,
            Err(status) => {
                count(status);
                return refusal(status, 1);
            }
        };
        let authenticated = tokio::time::timeout(
            config.handshake_timeout,
            shared.authenticator.authenticate(&hs),
        )
        .await;
        let principal = match authenticated {
            Ok(Ok(principal)) => principal,
            Ok(Err(_)) => {
                count(401);
                return refusal(401, 1);
            }
            Err(_) => {
                count(503);
                return refusal(503, 1);
            }
        };
        if config.quotas.kinds.handshakes {
            let key = QuotaKey::Principal(principal.id.clone());
            if let QuotaDecision::Limited { retry_after } =
                config.quotas.charge(QuotaKind::Handshakes, &key, 1).await
            {
                count(429);
                return refusal(429, whole_seconds(retry_after));
            }
        }
        let Ok(principal_permit) = shared.registry.admit_principal(&principal.id) else {
            count(429);
            return refusal(429, 1);
        };
        let limits = config.websocket_config();
        let max = limits.max_message_size.unwrap_or(usize::MAX);
        let fixed_cost = CONNECTION_STATE.saturating_add(config.read_buffer_size);
        ws.protocols([SUBPROTOCOL])
            .read_buffer_size(config.read_buffer_size)
            .write_buffer_size(0)
            .max_write_buffer_size(max.saturating_mul(2))
            .max_message_size(max)
            .max_frame_size(max)
            .on_upgrade(move |socket| async move {
                let charge = Arc::new(shared.budget.charge(fixed_cost));
                run_transport(
                    AxumTransport::new(socket),
                    charge,
                    fixed_cost,
                    client,
                    &shared,
                    accepted,
                    principal,
                )
                .await;
                drop((principal_permit, forwarded_permit, ip_permit));
            })
    }
}

//! From an accepted socket to a running connection: admission before anything is read
//! (memory budget, handshake rate, connection caps), the handshake in a pre-authentication
//! place under one deadline (head, Origin, subprotocol, async authentication, principal
//! cap), then the driver in the same task.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mux_proto::Side;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, info_span, warn};

use super::forwarded;
use super::fragments::FragmentCapped;
use super::handshake::{bearer_token, parse_protocols};
use super::head::{self, Head, HeadError, Probe, UpgradeRequest};
use super::limits::{ForwardedPermit, IpPermit, PrincipalPermit, Refusal};
use super::{lock, Shared};
use crate::auth::{HandshakeRequest, Principal};
use crate::budget::{Pressure, CONNECTION_STATE};
use crate::driver::{connection, Acceptor};
use crate::quota::{QuotaDecision, QuotaKey, QuotaKind};
use crate::read_ahead::ReadAhead;
use crate::replies::{Reading, Replies};
use crate::sparse::ShrinkSparse;
use crate::transport::TungsteniteTransport;

/// How long a refusal may take to write before the socket is simply closed.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Connections the accept loop takes in one go before it yields to the scheduler: each
/// costs syscalls and a spawn, and without a bound (tokio's budget allows 128) a storm of
/// them would hold the worker thread for a millisecond while established connections wait.
const ACCEPT_SLICE: usize = 2;

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut housekeeping = tokio::time::interval(super::HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since_yield = 0usize;
    loop {
        if since_yield >= ACCEPT_SLICE {
            // A storm of connections: let the ones already running have the thread first.
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            _ = housekeeping.tick() => {
                shared.housekeep();
                continue;
            }
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
        since_yield = since_yield.saturating_add(1);
        let _ = tcp.set_nodelay(true);
        match admit(&shared, peer) {
            Ok(permit) => {
                let shared = shared.clone();
                tokio::spawn(serve(tcp, peer, shared, permit));
            }
            Err((status, retry_after)) => {
                tokio::spawn(refuse_unread(tcp, status, retry_after));
            }
        }
    }
    debug!("accept loop stopped");
}

/// The checks that need nothing from the request (spec/http.md, checks 1 and 2): the
/// memory budget and the global cap (503), the source's handshake rate and connection cap
/// (429). Counted here; answered by the caller.
pub(super) fn admit(shared: &Shared, peer: SocketAddr) -> Result<IpPermit, (u16, u64)> {
    let refused = |status: u16, retry_after: u64| {
        let counter = if status == 503 {
            &shared.counters.refused_503
        } else {
            &shared.counters.refused_429
        };
        counter.fetch_add(1, Ordering::Relaxed);
        crate::observe::handshake_refused(status);
        Err((status, retry_after))
    };
    if shared.budget.pressure() >= Pressure::RefuseHandshakes {
        return refused(503, 1);
    }
    if shared.is_trusted_proxy(peer.ip()) {
        // The client behind the proxy is known only from the request: its rate and
        // per-IP cap are checked once the head is read.
        return match shared.registry.admit_trusted() {
            Ok(permit) => Ok(permit),
            Err(_) => refused(503, 1),
        };
    }
    let rate = lock(&shared.handshake_rate).check(peer.ip(), tokio::time::Instant::now());
    if let Err(wait) = rate {
        return refused(429, whole_seconds(wait));
    }
    match shared.registry.admit(peer.ip()) {
        Ok(permit) => Ok(permit),
        Err(Refusal::Global) => refused(503, 1),
        Err(Refusal::TooMany) => refused(429, 1),
    }
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1 (RFC 9110 has no fractions).
pub(super) fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
        .max(1)
}

/// Answers a connection that was not admitted, without reading its request.
pub(super) async fn refuse_unread<S: AsyncWrite + Unpin>(
    mut stream: S,
    status: u16,
    retry_after: u64,
) {
    let _ = tokio::time::timeout(
        REFUSAL_WRITE,
        head::refuse(&mut stream, status, retry_after),
    )
    .await;
}

/// Where a handshake got to, for the answer when its deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Reading the head: a peer this slow gets no answer.
    Head,
    /// The authenticator is deciding: the server was slow, so 503 and retry.
    Authenticating,
}

/// Why a handshake did not upgrade.
enum Refused {
    /// Answer with this status (counted under it).
    Status(u16),
    /// Over the principal's handshake quota: 429 with this `Retry-After`.
    Quota(u64),
    /// Not an upgrade but a health probe: answered, not counted as a refusal.
    Probe(Probe),
    /// Malformed or oversized head: answer, counted as a failed handshake.
    Head(HeadError),
}

/// Serves one admitted connection on any stream: TCP, or TLS the application terminated.
pub(super) async fn serve<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>, ip_permit: IpPermit)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // None once shutdown has completed: nothing may be served any more.
    let Some(accepted) = lock(&shared.accepted).clone() else {
        return;
    };
    let config = &shared.config;
    let mut stream =
        FragmentCapped::new(stream, config.max_message_frames, config.message_deadline);
    let place = shared.preauth.enter();
    // The unauthenticated slice: at most `max_unauthenticated` heads of `max_request_head`.
    let head_charge = shared.budget.charge(config.max_request_head);
    let mut stage = Stage::Head;
    let outcome = {
        let handshake = Box::pin(handshake(&mut stream, peer, &shared, &mut stage));
        tokio::select! {
            outcome = tokio::time::timeout(config.handshake_timeout, handshake) => Some(outcome),
            () = place.evicted() => None,
        }
    };
    drop(place);
    drop(head_charge);
    let counters = &shared.counters;
    let (principal, principal_permit, client, rest) = match outcome {
        Some(Ok(Ok(upgraded))) => upgraded,
        None => {
            counters.handshakes_evicted.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "handshake evicted by a newer one");
            return;
        }
        Some(Err(_elapsed)) => {
            counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
            if stage == Stage::Authenticating {
                counters.refused_503.fetch_add(1, Ordering::Relaxed);
                crate::observe::handshake_refused(503);
                refuse_unread(stream.get_mut(), 503, 1).await;
            } else {
                crate::observe::handshake_refused(0);
            }
            debug!(%peer, ?stage, "handshake deadline passed");
            return;
        }
        Some(Ok(Err(refused))) => {
            let mut retry_after = 1;
            let status = match refused {
                Refused::Probe(probe) => {
                    let (ok, word) = match probe {
                        Probe::Live => (true, "ok"),
                        Probe::Ready => match shared.not_ready() {
                            None => (true, "ready"),
                            Some(why) => (false, why),
                        },
                    };
                    head::answer_probe(stream.get_mut(), ok, word).await;
                    return;
                }
                Refused::Quota(secs) => {
                    counters.refused_429.fetch_add(1, Ordering::Relaxed);
                    retry_after = secs;
                    Some(429)
                }
                Refused::Status(status) => {
                    let counter = match status {
                        403 => &counters.refused_403,
                        400 => &counters.refused_400,
                        401 => &counters.refused_401,
                        429 => &counters.refused_429,
                        _ => &counters.handshake_failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    Some(status)
                }
                Refused::Head(e) => {
                    counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
                    e.status()
                }
            };
            crate::observe::handshake_refused(status.unwrap_or(0));
            debug!(%peer, ?status, "handshake refused");
            if let Some(status) = status {
                refuse_unread(stream.get_mut(), status, retry_after).await;
            }
            return;
        }
    };
    let (client, forwarded_permit) = client;
    run(
        stream,
        rest,
        client,
        &shared,
        accepted,
        principal,
        principal_permit,
    )
    .await;
    drop(forwarded_permit);
    drop(ip_permit);
}

/// The client's address behind a trusted proxy, and its place under the per-IP cap.
pub(super) type Client = (SocketAddr, Option<ForwardedPermit>);

/// Reads the head and runs every check of spec/http.md after the admission ones; on
/// success writes the 101 and returns the principal, the client's address and the bytes
/// read past the head.
async fn handshake<S>(
    stream: &mut FragmentCapped<S>,
    peer: SocketAddr,
    shared: &Shared,
    stage: &mut Stage,
) -> Result<(Principal, PrincipalPermit, Client, Vec<u8>), Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &shared.config;
    let (head, rest) = head::read_any(stream, config.max_request_head, config.health_checks)
        .await
        .map_err(Refused::Head)?;
    let request = match head {
        Head::Upgrade(request) => request,
        Head::Probe(probe) => return Err(Refused::Probe(probe)),
    };
    let client = forwarded_client(&request, peer, shared)?;
    let hs = check_request_for(&request, client.0, shared).map_err(Refused::Status)?;
    *stage = Stage::Authenticating;
    let mut clock = crate::observe::Stopwatch::default();
    clock.start();
    let principal = shared.authenticator.authenticate(&hs).await;
    crate::observe::authenticated(&mut clock, principal.is_ok());
    let principal = principal.map_err(|_| Refused::Status(401))?;
    // Per principal across connections and reconnects (and nodes, with a shared store).
    if config.quotas.kinds.handshakes {
        let key = QuotaKey::Principal(principal.id.clone());
        if let QuotaDecision::Limited { retry_after } =
            config.quotas.charge(QuotaKind::Handshakes, &key, 1).await
        {
            return Err(Refused::Quota(whole_seconds(retry_after)));
        }
    }
    let permit = shared
        .registry
        .admit_principal(&principal.id)
        .map_err(|_| Refused::Status(429))?;
    stream
        .write_all(head::switching_protocols(&request.accept_key).as_bytes())
        .await
        .map_err(|_| Refused::Head(HeadError::Gone))?;
    Ok((principal, permit, client, rest))
}

/// Behind a trusted proxy: the client it reports (400 if it cannot say), checked against
/// the handshake rate and the per-IP cap as a direct client is at accept.
fn forwarded_client(
    request: &UpgradeRequest,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<Client, Refused> {
    forwarded_client_for(request, peer, shared).map_err(|(status, retry_after)| {
        if status == 429 {
            Refused::Quota(retry_after)
        } else {
            Refused::Status(status)
        }
    })
}

/// [`forwarded_client`] with the refusal as (status, `Retry-After`).
pub(super) fn forwarded_client_for(
    request: &UpgradeRequest,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<Client, (u16, u64)> {
    let trusted = &shared.config.trusted_proxies;
    if !shared.is_trusted_proxy(peer.ip()) {
        return Ok((peer, None));
    }
    let client = forwarded::client_address(
        peer,
        &request.headers,
        trusted,
        shared.config.forwarded_header,
    )
    .map_err(|_| (400, 0))?;
    let rate = lock(&shared.handshake_rate).check(client.ip(), tokio::time::Instant::now());
    if let Err(wait) = rate {
        return Err((429, whole_seconds(wait)));
    }
    let permit = shared
        .registry
        .admit_forwarded(client.ip())
        .map_err(|_| (429, 1))?;
    Ok((client, Some(permit)))
}

/// Origin (403) and subprotocol (400), then what the authenticator sees. Every check
/// answers with a real status before any state is kept (spec/sessions.md).
pub(super) fn check_request_for(
    request: &UpgradeRequest,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<HandshakeRequest, u16> {
    let headers = &request.headers;
    // An Origin that is present must be one readable value: an unreadable or repeated
    // header is not a missing one (which `allow_missing` may admit).
    let mut origins = headers.get_all("origin").iter();
    let origin = match (origins.next().map(|v| v.to_str()), origins.next()) {
        (None, _) => Some(None),
        (Some(Ok(value)), None) => Some(Some(value)),
        _ => None,
    };
    let Some(origin) = origin.filter(|o| shared.config.origins.admits(*o)) else {
        return Err(403);
    };
    let protocols = parse_protocols(
        headers
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    if !protocols.offers_mux {
        return Err(400);
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .or(protocols.token);
    Ok(HandshakeRequest {
        peer,
        path: request.target.clone(),
        origin: origin.map(str::to_owned),
        token,
        headers: headers.clone(),
    })
}

/// The upgraded connection: its memory account, the WebSocket over the metered stream, and
/// the driver, in this task (one task per connection).
///
/// Not an `async fn`: one of those stores every argument twice for as long as it runs, and
/// this one runs as long as the connection (P7). The block captures each value once, and
/// the WebSocket's setup future is boxed so it is freed once done.
fn run<S>(
    mut stream: FragmentCapped<S>,
    rest: Vec<u8>,
    peer: SocketAddr,
    shared: &Shared,
    accepted: tokio::sync::mpsc::Sender<crate::session::Session>,
    principal: Principal,
    principal_permit: PrincipalPermit,
) -> impl std::future::Future<Output = ()> + Send + '_
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &shared.config;
    let fixed_cost = CONNECTION_STATE.saturating_add(config.read_buffer_size);
    let charge = Arc::new(shared.budget.charge(fixed_cost));
    stream.charge_to(charge.clone());
    let reading = Reading::default();
    let ws = Box::pin(WebSocketStream::from_partially_read(
        Replies::new(ReadAhead::new(stream), reading.clone()),
        rest,
        Role::Server,
        Some(config.websocket_config()),
    ));
    async move {
        let transport = TungsteniteTransport::with_reading(ws.await, reading);
        run_transport(
            transport, charge, fixed_cost, peer, shared, accepted, principal,
        )
        .await;
        drop(principal_permit);
    }
}

/// Runs an upgraded connection over any transport (tungstenite's here, axum's in the
/// adapter): its memory account, the driver in this task, the registry of live
/// connections.
pub(super) async fn run_transport<T: crate::transport::Transport>(
    transport: T,
    charge: Arc<crate::budget::Charge>,
    fixed_cost: usize,
    peer: SocketAddr,
    shared: &Shared,
    accepted: tokio::sync::mpsc::Sender<crate::session::Session>,
    principal: Principal,
) {
    let config = &shared.config;
    let conn_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    shared.counters.upgraded.fetch_add(1, Ordering::Relaxed);
    crate::observe::connection_opened();
    let span = info_span!("mux.conn", conn_id, %peer, principal = %principal.id);
    let principal_id = principal.id.clone();
    let acceptor = Acceptor {
        principal: Some(Arc::new(principal)),
        authorizer: shared.authorizer.clone(),
        accepted,
        quotas: Some(config.quotas.clone()),
    };
    let mut options = config.driver_options();
    options.charge = Some(charge);
    options.fixed_cost = fixed_cost;
    let (handle, driver) = connection(
        transport,
        Side::Server,
        config.protocol.clone(),
        options,
        acceptor,
        span.clone(),
    );
    lock(&shared.connections).insert(conn_id, (principal_id, handle.clone()));
    // A server that is already shutting down or draining tells late connections at once.
    if *shared.shutdown.borrow() || shared.draining.load(Ordering::Relaxed) {
        handle.go_away().await;
    }
    let outcome = driver.await;
    {
        let mut connections = lock(&shared.connections);
        connections.remove(&conn_id);
        connections.shrink_if_sparse();
    }
    crate::observe::connection_closed(outcome.code);
    span.in_scope(|| info!(code = ?outcome.code, messages_in = outcome.stats.messages_received, messages_out = outcome.stats.messages_sent, "connection ended"));
}

/// Serves a stream the application accepted itself (a TLS stream, a Unix socket), with
/// the same admission and handshake checks as the server's own listener.
pub(super) async fn serve_accepted<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match admit(&shared, peer) {
        Ok(permit) => serve(stream, peer, shared, permit).await,
        Err((status, retry_after)) => refuse_unread(stream, status, retry_after).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_size<A, B, C, D, R>(_: fn(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// The per-connection task's future, held for the connection's life (BENCHMARKS.md P7):
    /// 4,072 bytes when the driver, the transport and the setup futures were stored inline
    /// and twice over by nested `async fn`s; about 1.7 KB since.
    #[test]
    fn a_connection_task_stays_small() {
        let size = output_size(serve::<tokio::net::TcpStream>);
        assert!(size <= 2048, "{size}");
    }
}

//! The transport-agnostic connection task: it owns one `mux_proto::Connection`, performs
//! its I/O over any [`Transport`], runs per-session authorization, and feeds session handles.
//!
//! Every queue here is bounded: commands from handles, each session's inbox, the writer's
//! channel (two messages), and authorization tasks (bounded by the protocol's pending-open cap).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use mux_proto::{
    CloseCode, Config, Connection, ConnectionStats, Event, Grant, Initiator, OpenRequest,
    SessionId, SessionStats, Side, Timestamp,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, trace, warn, Instrument};

use crate::auth::{Authorizer, Principal, Rejection};
use crate::error::{OpenError, SendError, SessionClosed};
use crate::session::{OpenInfo, Session, Shared};
use crate::transport::{Transport, WsMessage};

/// How long a closing connection keeps reading (and discarding) for the peer's answer to
/// its Close; see the lingering close in `Driver::run`.
const LINGER: Duration = Duration::from_secs(1);

/// A lingering close ends once the peer has sent nothing for this long.
const LINGER_QUIET: Duration = Duration::from_millis(100);

/// Requests from handles to their connection task.
#[derive(Debug)]
pub(crate) enum Command {
    Open {
        kind: String,
        auth: Bytes,
        reply: oneshot::Sender<Result<Session, OpenError>>,
    },
    Send {
        id: SessionId,
        message: Bytes,
        reply: oneshot::Sender<Result<(), SendError>>,
    },
    Drained {
        id: SessionId,
    },
    Finish {
        id: SessionId,
    },
    /// The application dropped its `Session` without closing it: see `Driver::dropped`.
    Dropped {
        id: SessionId,
    },
    Close {
        id: SessionId,
        code: CloseCode,
        reason: String,
        graceful: bool,
    },
    SessionStats {
        id: SessionId,
        reply: oneshot::Sender<Option<SessionStats>>,
    },
    Stats {
        reply: oneshot::Sender<ConnectionStats>,
    },
    GoAway {
        code: CloseCode,
        reason: String,
    },
    CloseConnection {
        code: CloseCode,
        reason: String,
    },
}

/// Knobs of the connection task.
#[derive(Debug, Clone)]
pub(crate) struct DriverOptions {
    /// A write that does not complete in this long means the peer stopped reading.
    pub(crate) write_timeout: Duration,
    /// Messages handed to a session handle ahead of the application reading them.
    pub(crate) inbox_capacity: usize,
    /// Commands queued from handles.
    pub(crate) command_capacity: usize,
    /// Deadline for the authorization hook.
    pub(crate) authorize_timeout: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            write_timeout: Duration::from_secs(10),
            inbox_capacity: 4,
            command_capacity: 64,
            authorize_timeout: Duration::from_secs(4),
        }
    }
}

/// Where sessions the peer opens go: the authorizer decides, accepted ones are queued here.
#[derive(Clone)]
pub(crate) struct Acceptor {
    pub(crate) principal: Option<Principal>,
    pub(crate) authorizer: Arc<dyn Authorizer>,
    pub(crate) accepted: mpsc::Sender<Session>,
}

/// How a connection ended.
#[derive(Debug, Clone)]
pub struct ConnectionOutcome {
    /// The close code, if the connection closed with one.
    pub code: Option<CloseCode>,
    /// The final counters.
    pub stats: ConnectionStats,
}

/// A cheap handle to a running connection task.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    pub(crate) commands: mpsc::Sender<Command>,
}

impl ConnectionHandle {
    /// Opens a session and waits for the peer's decision.
    pub async fn open(&self, kind: &str, auth: Bytes) -> Result<Session, OpenError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Open {
                kind: kind.to_owned(),
                auth,
                reply,
            })
            .await
            .map_err(|_| OpenError::ConnectionClosed)?;
        rx.await.map_err(|_| OpenError::ConnectionClosed)?
    }

    /// The connection's counters.
    pub async fn stats(&self) -> Option<ConnectionStats> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Stats { reply }).await.ok()?;
        rx.await.ok()
    }

    /// Starts a graceful shutdown (GOAWAY, then close 1001 when sessions finish).
    pub async fn go_away(&self) {
        let _ = self
            .commands
            .send(Command::GoAway {
                code: CloseCode::GOING_AWAY,
                reason: "shutting down".into(),
            })
            .await;
    }

    /// Closes the connection now.
    pub async fn close(&self, code: CloseCode, reason: &str) {
        let _ = self
            .commands
            .send(Command::CloseConnection {
                code,
                reason: reason.to_owned(),
            })
            .await;
    }

    /// Asks the connection to close with `code` without waiting (for `Drop`). If its
    /// command queue is full, the request is delivered from a task on the current runtime.
    pub(crate) fn close_soon(&self, code: CloseCode, reason: &str) {
        let command = Command::CloseConnection {
            code,
            reason: reason.to_owned(),
        };
        if let Err(mpsc::error::TrySendError::Full(command)) = self.commands.try_send(command) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let commands = self.commands.clone();
                runtime.spawn(async move {
                    let _ = commands.send(command).await;
                });
            }
        }
    }

    /// True once the connection task has ended.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }
}

/// Starts the connection task on `transport`.
pub(crate) fn spawn_connection<T: Transport>(
    transport: T,
    side: Side,
    config: Config,
    options: DriverOptions,
    acceptor: Acceptor,
    span: tracing::Span,
) -> (ConnectionHandle, tokio::task::JoinHandle<ConnectionOutcome>) {
    let (commands_tx, commands_rx) = mpsc::channel(options.command_capacity);
    let handle = ConnectionHandle {
        commands: commands_tx.clone(),
    };
    let task = Driver::new(side, config, options, acceptor, commands_tx);
    let join = tokio::spawn(task.run(transport, commands_rx).instrument(span));
    (handle, join)
}

/// The driver's record of one session.
struct Slot {
    inbox: Option<mpsc::Sender<Bytes>>,
    shared: Arc<Shared>,
    /// Sends waiting for room, in order; one per sender awaiting its reply.
    parked: VecDeque<(Bytes, oneshot::Sender<Result<(), SendError>>)>,
    peer_finished: bool,
    /// Whether this side may send DATA (and so FIN) on the session, per its grant.
    may_send: bool,
}

type OpenReply = oneshot::Sender<Result<Session, OpenError>>;

type Decision = (
    SessionId,
    String,
    Result<Grant, Option<Rejection>>,
    Option<mpsc::OwnedPermit<Session>>,
);

struct Driver {
    conn: Connection,
    epoch: Instant,
    options: DriverOptions,
    acceptor: Acceptor,
    commands_tx: mpsc::Sender<Command>,
    slots: HashMap<SessionId, Slot>,
    opening: HashMap<SessionId, (String, oneshot::Sender<Result<Session, OpenError>>)>,
    /// Opens requested before the peer's SETTINGS arrived (the protocol refuses them until
    /// then); issued on `Connected`. At most `command_capacity`.
    early_opens: Vec<(String, Bytes, OpenReply)>,
    authorizing: JoinSet<Decision>,
    /// The authorization task of each pending peer open, so it is dropped when the session
    /// ends before a decision (a reset OPEN must not keep the application's hook running:
    /// rapid reset). At most the pending-open cap.
    deciding: HashMap<SessionId, AbortHandle>,
    buf: BytesMut,
}

impl Driver {
    fn new(
        side: Side,
        mut config: Config,
        options: DriverOptions,
        acceptor: Acceptor,
        commands_tx: mpsc::Sender<Command>,
    ) -> Self {
        if config.hash_seed == 0 {
            config.hash_seed = random_seed();
        }
        let epoch = Instant::now();
        Driver {
            conn: Connection::new(side, config, Timestamp::ZERO),
            epoch,
            options,
            acceptor,
            commands_tx,
            slots: HashMap::new(),
            opening: HashMap::new(),
            early_opens: Vec::new(),
            authorizing: JoinSet::new(),
            deciding: HashMap::new(),
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// `t` on tokio's clock; `None` if it is too far ahead to represent (no deadline).
    fn instant(&self, t: Timestamp) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_micros(t.as_micros()))
    }

    async fn run<T: Transport>(
        mut self,
        transport: T,
        mut commands: mpsc::Receiver<Command>,
    ) -> ConnectionOutcome {
        let (mut sink, mut stream) = transport.split();
        let (write_tx, mut write_rx) = mpsc::channel::<WsMessage>(2);
        let write_timeout = self.options.write_timeout;
        // The writer owns the sink so a slow peer stalls only it; a write that takes longer
        // than the deadline ends the connection (spec/sessions.md: slow consumers).
        let mut writer = tokio::spawn(async move {
            while let Some(message) = write_rx.recv().await {
                let closing = matches!(message, WsMessage::Close(_));
                match timeout(write_timeout, sink.send(message)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("write failed: {e}")),
                    Err(_) => return Err("peer did not read within the write deadline".to_owned()),
                }
                if closing {
                    let _ = timeout(write_timeout, sink.close()).await;
                    return Ok(());
                }
            }
            Ok(())
        });
        let mut reading = true;
        // The peer closed or the transport failed: nothing more can be read.
        let mut peer_gone = false;
        let mut transmit_idle = false;
        loop {
            self.process_events();
            if self.conn.is_closed() && transmit_idle {
                // CONN_CLOSE went out; close the WebSocket with the same code.
                let code = self.conn.close_code().unwrap_or(CloseCode::NORMAL);
                let code = if code.is_valid_on_wire() {
                    code
                } else {
                    CloseCode::NORMAL
                };
                let _ = timeout(
                    write_timeout,
                    write_tx.send(WsMessage::Close(Some(code.get()))),
                )
                .await;
                // Wait (bounded by the write deadline) for the writer to flush and close.
                let _ = timeout(write_timeout, &mut writer).await;
                if !peer_gone {
                    // A lingering close: read and discard what the peer still sends until it
                    // answers our Close, goes quiet, or a short deadline passes. Dropping a
                    // socket with unread input resets it, and the reset destroys our Close
                    // still in flight: the peer would never learn the code. A quiet peer
                    // (nothing left to read) gets a clean close at once.
                    let _ = timeout(LINGER.min(write_timeout), async {
                        while let Ok(Some(Ok(message))) = timeout(LINGER_QUIET, stream.next()).await
                        {
                            if matches!(message, WsMessage::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                }
                break;
            }
            let deadline = self.conn.poll_timeout().and_then(|t| self.instant(t));
            tokio::select! {
                biased;
                ended = &mut writer => {
                    let reason = match ended {
                        Ok(Err(reason)) => reason,
                        _ => "writer ended".to_owned(),
                    };
                    warn!(%reason, "closing connection");
                    self.conn.handle_transport_closed(self.now());
                    self.process_events();
                    break;
                }
                permit = write_tx.reserve(), if !transmit_idle => {
                    let Ok(permit) = permit else { break };
                    if self.conn.poll_transmit(self.now(), &mut self.buf) {
                        permit.send(WsMessage::Binary(self.buf.split().freeze()));
                    } else {
                        transmit_idle = true;
                    }
                }
                Some(command) = commands.recv() => {
                    self.handle_command(command);
                    transmit_idle = false;
                }
                Some(decision) = self.authorizing.join_next(), if !self.authorizing.is_empty() => {
                    if let Ok(decision) = decision {
                        self.handle_decision(decision);
                    }
                    transmit_idle = false;
                }
                message = stream.next(), if reading && self.conn.wants_read() => {
                    let now = self.now();
                    match message {
                        Some(Ok(WsMessage::Binary(bytes))) => {
                            trace!(len = bytes.len(), "message in");
                            self.conn.handle_message(now, bytes);
                        }
                        Some(Ok(WsMessage::Text)) => self.conn.handle_text_message(now),
                        Some(Ok(WsMessage::Control)) => self.conn.handle_transport_control(now),
                        Some(Err(e)) if e.close_code().is_some() => {
                            // The peer broke RFC 6455 itself; the socket still works, so the
                            // connection is failed with the code (CONN_CLOSE, then the
                            // WebSocket Close), not dropped as if the transport had died.
                            reading = false;
                            let code = CloseCode(e.close_code().unwrap_or(1002));
                            warn!(code = code.get(), error = %e, "websocket protocol violation");
                            self.conn.close(now, code, "websocket protocol violation");
                        }
                        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => {
                            reading = false;
                            peer_gone = true;
                            self.conn.handle_transport_closed(now);
                        }
                    }
                    transmit_idle = false;
                    // Messages already buffered by the WebSocket layer are returned without
                    // touching the socket, so nothing else would make a flooded connection
                    // yield: take a unit of tokio's cooperative budget per message, so one
                    // connection's burst cannot hold a worker thread from all the others.
                    tokio::task::coop::consume_budget().await;
                }
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.conn.handle_timeout(self.now());
                    transmit_idle = false;
                }
            }
        }
        writer.abort();
        self.authorizing.abort_all();
        self.fail_all();
        ConnectionOutcome {
            code: self.conn.close_code(),
            stats: self.conn.stats(),
        }
    }

    fn handle_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Open { kind, auth, reply } => {
                let handshaking =
                    self.conn.peer_settings().is_none() && self.conn.close_code().is_none();
                if handshaking && self.early_opens.len() < self.options.command_capacity {
                    self.early_opens.push((kind, auth, reply));
                } else {
                    self.open(kind, auth, reply);
                }
            }
            Command::Send { id, message, reply } => self.send(id, message, reply),
            Command::Drained { id } => self.deliver(id),
            Command::Finish { id } => {
                let _ = self.conn.finish(now, id);
            }
            Command::Dropped { id } => self.dropped(id),
            Command::Close {
                id,
                code,
                reason,
                graceful,
            } => {
                let _ = if graceful {
                    self.conn.close_session(now, id, code, &reason)
                } else {
                    self.conn.reset(now, id, code, &reason)
                };
            }
            Command::SessionStats { id, reply } => {
                let _ = reply.send(self.conn.session_stats(id));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.conn.stats());
            }
            Command::GoAway { code, reason } => self.conn.go_away(now, code, &reason),
            Command::CloseConnection { code, reason } => self.conn.close(now, code, &reason),
        }
    }

    fn open(&mut self, kind: String, auth: Bytes, reply: OpenReply) {
        match self
            .conn
            .open(self.now(), &kind, auth, OpenRequest::default())
        {
            Ok(id) => {
                self.opening.insert(id, (kind, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(OpenError::Local(e)));
            }
        }
    }

    fn send(
        &mut self,
        id: SessionId,
        message: Bytes,
        reply: oneshot::Sender<Result<(), SendError>>,
    ) {
        let now = self.now();
        if reply.is_closed() {
            // Its `send` future was dropped before this command was read: it did not take
            // the message, so it must never be sent (cancel safety, see `Session::send`).
            return;
        }
        let Some(slot) = self.slots.get_mut(&id) else {
            let _ = reply.send(Err(closed_error(None)));
            return;
        };
        if !slot.parked.is_empty() {
            // Keep order behind sends already waiting. Sends whose futures were dropped
            // leave, so the queue holds at most one entry per live `send` future.
            slot.parked.retain(|(_, reply)| !reply.is_closed());
            slot.parked.push_back((message, reply));
            return;
        }
        match self.conn.send(now, id, message.clone()) {
            Ok(()) => {
                let _ = reply.send(Ok(()));
            }
            // Backpressure: the reply waits until the session can take the message.
            Err(mux_proto::SendError::Blocked) => slot.parked.push_back((message, reply)),
            Err(e) => {
                let _ = reply.send(Err(map_send_error(e, &slot.shared)));
            }
        }
    }

    fn handle_decision(&mut self, (id, kind, decision, permit): Decision) {
        self.deciding.remove(&id);
        let now = self.now();
        match (decision, permit) {
            (Ok(grant), Some(permit)) => {
                if self.conn.accept(now, id, grant).is_ok() {
                    debug!(session_id = id.get(), kind = %kind, "session accepted");
                    crate::observe::session_opened();
                    let may_send = grant.permissions.acceptor_may_send();
                    let principal = self.acceptor.principal.clone();
                    let session = self.new_session(id, kind, principal, may_send);
                    permit.send(session);
                }
            }
            (Ok(_), None) => {
                warn!(session_id = id.get(), "accept queue full: refusing session");
                let _ = self
                    .conn
                    .reject(now, id, CloseCode::TOO_MANY_SESSIONS, "server busy");
            }
            (Err(Some(rejection)), _) => {
                warn!(session_id = id.get(), kind = %kind, code = rejection.code.get(), "session refused");
                let code = if rejection.code.is_valid_on_wire() {
                    rejection.code
                } else {
                    CloseCode::FORBIDDEN
                };
                let _ = self.conn.reject(now, id, code, &rejection.reason);
            }
            (Err(None), _) => {
                warn!(session_id = id.get(), kind = %kind, "authorization timed out");
                let _ = self
                    .conn
                    .reject(now, id, CloseCode::TIMEOUT, "authorization timed out");
            }
        }
    }

    fn new_session(
        &mut self,
        id: SessionId,
        kind: String,
        principal: Option<Principal>,
        may_send: bool,
    ) -> Session {
        let (tx, rx) = mpsc::channel(self.options.inbox_capacity.max(1));
        let shared = Arc::new(Shared::default());
        self.slots.insert(
            id,
            Slot {
                inbox: Some(tx),
                shared: shared.clone(),
                parked: VecDeque::new(),
                peer_finished: false,
                may_send,
            },
        );
        Session {
            id,
            kind,
            commands: self.commands_tx.clone(),
            inbox: rx,
            shared,
            principal,
            may_send,
            done: false,
        }
    }

    /// Moves readable messages into the session's inbox while it has room. Reading from the
    /// protocol is what returns credit, so credit follows the application's pace.
    fn deliver(&mut self, id: SessionId) {
        let now = self.now();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(inbox) = slot.inbox.clone() else {
            return;
        };
        loop {
            let permit = match inbox.try_reserve() {
                Ok(permit) => permit,
                Err(mpsc::error::TrySendError::Full(())) => {
                    // Flag first, then retry once: a read racing with this sees the flag.
                    slot.shared.starved.store(true, Ordering::Release);
                    match inbox.try_reserve() {
                        Ok(permit) => permit,
                        Err(_) => return,
                    }
                }
                Err(mpsc::error::TrySendError::Closed(())) => return,
            };
            match self.conn.recv(now, id) {
                Some(message) => permit.send(message),
                None => break,
            }
        }
        if slot.peer_finished {
            // Everything the peer sent is in the inbox: end the stream after it.
            slot.inbox = None;
        }
    }

    /// Ends a session whose handle was dropped without `close` or `reset`, without losing
    /// what the application already sent (spec/sessions.md#dropping-a-session): after the
    /// peer's FIN it is an implicit finish, our FIN following the queued messages, and the
    /// session ends normally (1000); before it, a graceful CLOSE 4010 CANCELLED after the
    /// queued messages. Nobody reads any more, so what the peer sent and was not read is
    /// discarded (its credit goes back).
    fn dropped(&mut self, id: SessionId) {
        let now = self.now();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.inbox = None;
        if slot.peer_finished {
            while self.conn.recv(now, id).is_some() {}
            if slot.may_send && self.conn.finish(now, id).is_ok() {
                return;
            }
            // This side may not send, so it has no FIN to send (spec/sessions.md#closing).
            let _ = self.conn.close_session(now, id, CloseCode::NORMAL, "");
            return;
        }
        let _ = self.conn.close_session(now, id, CloseCode::CANCELLED, "");
    }

    fn process_events(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::Connected { settings } => {
                    debug!(?settings, "peer settings received");
                    for (kind, auth, reply) in std::mem::take(&mut self.early_opens) {
                        self.open(kind, auth, reply);
                    }
                }
                Event::Incoming { id, kind, auth, .. } => {
                    self.authorize(id, kind.as_str().to_owned(), auth)
                }
                Event::Opened { id, grant } => {
                    crate::observe::session_opened();
                    if let Some((kind, reply)) = self.opening.remove(&id) {
                        let may_send = grant.permissions.opener_may_send();
                        let session = self.new_session(id, kind, None, may_send);
                        if let Err(Ok(session)) = reply.send(Ok(session)) {
                            drop(session);
                        }
                    }
                }
                Event::Readable { id } => self.deliver(id),
                Event::Writable { id } => self.retry_parked(id),
                Event::Finished { id } => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.peer_finished = true;
                    }
                    self.deliver(id);
                }
                Event::SessionClosed {
                    id,
                    code,
                    initiator,
                    reason,
                    retry_after_ms,
                } => self.session_closed(id, code, initiator, reason.as_str(), retry_after_ms),
                Event::GoAway {
                    last_session_id,
                    code,
                } => {
                    debug!(
                        last_session_id = last_session_id.get(),
                        code = code.get(),
                        "peer is going away"
                    );
                }
                Event::LimitHit { id, limit } => {
                    crate::observe::limit_hit(limit);
                    warn!(session_id = id.map(SessionId::get), ?limit, "limit hit");
                }
                Event::ConnectionClosed {
                    code,
                    initiator,
                    reason,
                } => {
                    if initiator == Initiator::Local
                        && code != CloseCode::NORMAL
                        && code != CloseCode::GOING_AWAY
                    {
                        warn!(
                            code = code.get(),
                            reason = reason.as_str(),
                            "closing connection"
                        );
                    } else {
                        debug!(code = code.get(), ?initiator, "connection closed");
                    }
                }
                _ => {}
            }
        }
    }

    fn authorize(&mut self, id: SessionId, kind: String, auth: Bytes) {
        let principal = self
            .acceptor
            .principal
            .clone()
            .unwrap_or_else(|| Principal::new("peer"));
        let authorizer = self.acceptor.authorizer.clone();
        let accepted = self.acceptor.accepted.clone();
        let deadline = self.options.authorize_timeout;
        let info = OpenInfo {
            id,
            kind: kind.clone(),
            auth,
        };
        let task = self.authorizing.spawn(async move {
            let decision = match timeout(deadline, authorizer.authorize(&principal, &info)).await {
                Ok(Ok(grant)) => Ok(grant),
                Ok(Err(rejection)) => Err(Some(rejection)),
                Err(_) => Err(None),
            };
            // Reserve a place in the accept queue within the same deadline, so an application
            // that stops accepting sessions pushes back on the peer instead of growing a queue.
            let permit = match decision {
                Ok(_) => timeout(deadline, accepted.reserve_owned())
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(_) => None,
            };
            (id, kind, decision, permit)
        });
        self.deciding.insert(id, task);
    }

    fn retry_parked(&mut self, id: SessionId) {
        let now = self.now();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        while let Some((message, reply)) = slot.parked.front() {
            if reply.is_closed() {
                // Cancelled while waiting for room: never sent.
                slot.parked.pop_front();
                continue;
            }
            match self.conn.send(now, id, message.clone()) {
                Err(mux_proto::SendError::Blocked) => break,
                result => {
                    if let Some((_, reply)) = slot.parked.pop_front() {
                        let _ = reply.send(result.map_err(|e| map_send_error(e, &slot.shared)));
                    }
                }
            }
        }
    }

    fn session_closed(
        &mut self,
        id: SessionId,
        code: CloseCode,
        initiator: Initiator,
        reason: &str,
        retry_after_ms: u32,
    ) {
        crate::observe::session_closed(code);
        if let Some(task) = self.deciding.remove(&id) {
            // Ended while its authorization was still running (reset by the peer, or past
            // the protocol's deadline): drop the hook's work now.
            task.abort();
        }
        let by_peer = initiator == Initiator::Peer;
        if let Some((_, reply)) = self.opening.remove(&id) {
            let _ = reply.send(Err(OpenError::Refused {
                code,
                reason: reason.to_owned(),
                retry_after_ms,
            }));
            return;
        }
        if let Some(mut slot) = self.slots.remove(&id) {
            let closed = SessionClosed {
                code,
                reason: reason.to_owned(),
                by_peer,
            };
            slot.shared.end(closed.clone());
            for (_, reply) in slot.parked.drain(..) {
                let _ = reply.send(Err(SendError::Closed(closed.clone())));
            }
            if code != CloseCode::NORMAL && code != CloseCode::CANCELLED {
                debug!(
                    session_id = id.get(),
                    code = code.get(),
                    by_peer,
                    "session closed"
                );
            }
        }
    }

    /// The connection ended: every handle learns it.
    fn fail_all(&mut self) {
        let code = self.conn.close_code().unwrap_or(CloseCode::ABNORMAL);
        for (_, mut slot) in self.slots.drain() {
            let closed = SessionClosed {
                code,
                reason: "connection closed".into(),
                by_peer: false,
            };
            slot.shared.end(closed.clone());
            for (_, reply) in slot.parked.drain(..) {
                let _ = reply.send(Err(SendError::Closed(closed.clone())));
            }
        }
        for (_, (_, reply)) in self.opening.drain() {
            let _ = reply.send(Err(OpenError::ConnectionClosed));
        }
        for (_, _, reply) in self.early_opens.drain(..) {
            let _ = reply.send(Err(OpenError::ConnectionClosed));
        }
    }
}

fn map_send_error(e: mux_proto::SendError, shared: &Shared) -> SendError {
    match e {
        mux_proto::SendError::TooLarge { len, max } => SendError::TooLarge { len, max },
        mux_proto::SendError::NotPermitted => SendError::NotPermitted,
        mux_proto::SendError::Finished => SendError::Finished,
        _ => closed_error(shared.closed.get().cloned()),
    }
}

fn closed_error(closed: Option<SessionClosed>) -> SendError {
    SendError::Closed(closed.unwrap_or(SessionClosed {
        code: CloseCode::ABNORMAL,
        reason: "session is gone".into(),
        by_peer: false,
    }))
}

/// A per-process random value for the session table's hasher (std's SipHash keys are random).
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x6d75_782e_7631);
    h.finish()
}

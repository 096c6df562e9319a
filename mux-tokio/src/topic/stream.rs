//! The client side of a topic: a subscription that follows the client across reconnects. It
//! tracks its position from the events (spec/topics.md, M-TOPIC-7) and, whenever its session
//! ends with the connection or as a slow consumer, opens the topic again resuming from there,
//! so the application sees one stream of events and a gap only for messages the server's
//! history no longer had.

use mux_proto::{CloseCode, Credential, Scope};
use tokio::sync::watch;

use super::{decode, KindError, MalformedEvent, StreamPosition, TopicEvent, TopicKind};
use crate::driver::ConnectionHandle;
use crate::error::{OpenError, SessionClosed};
use crate::session::Session;

/// Why a [`TopicStream`] has no event for now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicStreamError {
    /// The topic name contains U+0000 or is over [`MAX_TOPIC_LEN`](super::MAX_TOPIC_LEN).
    #[error(transparent)]
    InvalidTopic(#[from] KindError),
    /// The server refused the topic, or the open failed on a live connection. The next
    /// [`TopicStream::next`] tries again.
    #[error("subscribing failed: {0}")]
    Refused(#[source] OpenError),
    /// The server ended the subscription (revoked it, or closed the session). The next
    /// [`TopicStream::next`] subscribes again, from the same position.
    #[error("the subscription ended: {0}")]
    Closed(#[source] SessionClosed),
    /// The server sent a malformed event (its fault, M-TOPIC-1); the session was dropped and
    /// the next [`TopicStream::next`] resumes.
    #[error(transparent)]
    Malformed(#[from] MalformedEvent),
    /// The client is closed or gave up reconnecting: no more events.
    #[error("the client is closed")]
    ClientClosed,
}

/// A topic subscription that survives reconnects: read its events with
/// [`TopicStream::next`]. Made by [`Client::subscribe`](crate::Client::subscribe).
///
/// After the client reconnects (or the server closed the session as a slow consumer), the
/// next call opens the topic again with the kind `topic`, U+0000, `epoch:offset` of its
/// [`position`](TopicStream::position): the server replays what was missed, then live
/// messages, with no duplicate and no gap unless history lost them. The events of each new
/// subscription start with a [`TopicEvent::Position`]; a presence topic's snapshot follows.
///
/// Dropping it ends the subscription (the session closes with 4010 CANCELLED).
#[derive(Debug)]
pub struct TopicStream {
    topic: String,
    auth: Credential,
    connections: watch::Receiver<Option<ConnectionHandle>>,
    live: Option<(ConnectionHandle, Session)>,
    position: Option<StreamPosition>,
}

impl TopicStream {
    /// Subscribes on the client's current connection (waiting for one if it is
    /// reconnecting); a refusal is reported now, not at the first event.
    pub(crate) async fn open(
        connections: watch::Receiver<Option<ConnectionHandle>>,
        topic: &str,
        auth: Credential,
        from: Option<StreamPosition>,
    ) -> Result<Self, TopicStreamError> {
        TopicKind::new(topic, from)?;
        let mut stream = TopicStream {
            topic: topic.to_owned(),
            auth,
            connections,
            live: None,
            position: from,
        };
        stream.subscribe().await?;
        Ok(stream)
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Where the subscription stands: the last position event, moved on by every message and
    /// known gap since. Persist it to resume in another process with
    /// [`Client::subscribe_from`](crate::Client::subscribe_from).
    pub fn position(&self) -> Option<StreamPosition> {
        self.position
    }

    /// The next event: a message, a gap, a position, or presence. Unknown events are skipped.
    /// Waits through reconnects.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe while the session is live: an event is either returned or left for the
    /// next call. A call cancelled while re-subscribing cancels that open; the next call opens
    /// again from the same position.
    pub async fn next(&mut self) -> Result<TopicEvent, TopicStreamError> {
        loop {
            if self.live.is_none() {
                self.subscribe().await?;
            }
            let Some((handle, session)) = self.live.as_mut() else {
                continue;
            };
            let Some(message) = session.recv().await else {
                let lost = handle.is_closed();
                let reason = session.close_reason().cloned();
                self.live = None;
                match reason {
                    _ if lost => continue,
                    Some(r) if resumable(&r) => continue,
                    Some(r) => return Err(TopicStreamError::Closed(r)),
                    // The server finished the session: the topic ended for this subscriber.
                    None => {
                        return Err(TopicStreamError::Closed(SessionClosed {
                            code: CloseCode::NORMAL,
                            reason: "finished".into(),
                            by_peer: true,
                        }))
                    }
                }
            };
            let event = match decode(&message) {
                Ok(TopicEvent::Unknown { .. }) => continue,
                Ok(event) => event,
                Err(malformed) => {
                    if let Some((_, session)) = self.live.take() {
                        session
                            .reset(CloseCode::PROTOCOL_ERROR, "malformed topic event")
                            .await;
                    }
                    return Err(malformed.into());
                }
            };
            self.position = match (&event, self.position) {
                (TopicEvent::Position(p), _) => Some(*p),
                (_, Some(p)) => Some(p.after(&event)),
                (_, None) => None,
            };
            return Ok(event);
        }
    }

    /// Opens the topic from the current position on a live connection, waiting for one.
    async fn subscribe(&mut self) -> Result<(), TopicStreamError> {
        loop {
            let handle = match self
                .connections
                .wait_for(|c| c.as_ref().is_some_and(|h| !h.is_closed()))
                .await
            {
                Ok(handle) => handle.clone(),
                Err(_) => return Err(TopicStreamError::ClientClosed),
            };
            let Some(handle) = handle else {
                continue;
            };
            let kind = TopicKind::new(&self.topic, self.position)?.to_string();
            match handle.open(&kind, self.auth.clone()).await {
                Ok(session) => {
                    self.live = Some((handle, session));
                    return Ok(());
                }
                // This connection is ending: wait for the client's next one.
                Err(e) if on_next_connection(&e) => {
                    if self.connections.changed().await.is_err() {
                        return Err(TopicStreamError::ClientClosed);
                    }
                }
                Err(e) => return Err(TopicStreamError::Refused(e)),
            }
        }
    }
}

/// A session end the subscription recovers from by itself: the connection's end, or the
/// server dropping a slow consumer (4008 is retryable; the history covers what it can).
fn resumable(reason: &SessionClosed) -> bool {
    reason.code == CloseCode::SLOW_CONSUMER
        || reason.code == CloseCode::ABNORMAL
        || reason.code.scope() == Scope::Connection
        || !reason.by_peer
}

/// An open that failed because its connection is going away, not because of the topic.
fn on_next_connection(error: &OpenError) -> bool {
    match error {
        OpenError::ConnectionClosed => true,
        OpenError::Refused { code, .. } => *code == CloseCode::REFUSED,
        OpenError::Local(e) => matches!(
            e,
            mux_proto::OpenError::GoingAway
                | mux_proto::OpenError::IdsExhausted
                | mux_proto::OpenError::NotOpen
        ),
    }
}

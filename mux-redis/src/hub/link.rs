//! The pub/sub link: one Redis connection in subscriber mode per hub. It connects (with
//! backoff), subscribes every topic that has subscribers here, then reads messages in
//! Redis's order and hands each to the `LocalHub` (which never waits, so the connection's
//! queue inside the redis crate is drained as fast as it fills). Before it reads, a link that
//! came back moves the subscribers through what Redis's history kept of the messages it
//! missed (`Shared::recover`). A ping every `ping_interval` notices a Redis that went silent;
//! any failure drops the connection and starts again.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{watch, Notify};

use super::{bump, Link, Shared};

/// Runs until the hub is dropped.
pub(super) async fn run(
    hub: Weak<Shared>,
    client: redis::Client,
    mut closed: watch::Receiver<()>,
    relinked: Arc<Notify>,
) {
    let Some((min, max)) = hub
        .upgrade()
        .map(|h| (h.options.reconnect_min, h.options.reconnect_max))
    else {
        return;
    };
    let mut backoff = min;
    loop {
        match connect(&hub, &client, &mut closed).await {
            Step::Closed => return,
            Step::Retry => {}
            Step::Linked(sink, stream, broken, topics) => {
                backoff = min;
                relinked.notify_one();
                // What was published while the link was down, before anything newer: the new
                // connection queues what arrives meanwhile.
                let Some(shared) = hub.upgrade() else { return };
                tokio::select! {
                    _ = closed.changed() => return,
                    () = shared.recover(topics) => {}
                }
                drop(shared);
                if read(&hub, sink, stream, &broken, &mut closed).await {
                    return;
                }
                let Some(shared) = hub.upgrade() else { return };
                let mut control = shared.control.lock().await;
                shared.drop_link(&mut control);
                tracing::warn!(node = %shared.node, "redis pub/sub link lost; reconnecting");
            }
        }
        tokio::select! {
            _ = closed.changed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = backoff.saturating_mul(2).min(max);
    }
}

enum Step {
    Closed,
    Retry,
    Linked(
        redis::aio::PubSubSink,
        redis::aio::PubSubStream,
        Arc<Notify>,
        Vec<String>,
    ),
}

/// Connects and subscribes every topic with subscribers here; the link is live once this
/// returns `Linked`.
async fn connect(
    hub: &Weak<Shared>,
    client: &redis::Client,
    closed: &mut watch::Receiver<()>,
) -> Step {
    let Some(timeout) = hub.upgrade().map(|h| h.options.connect_timeout) else {
        return Step::Closed;
    };
    let pubsub = tokio::select! {
        _ = closed.changed() => return Step::Closed,
        r = tokio::time::timeout(timeout, client.get_async_pubsub()) => r,
    };
    let (mut sink, stream) = match pubsub {
        Ok(Ok(pubsub)) => pubsub.split(),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "redis pub/sub connect failed");
            return Step::Retry;
        }
        Err(_) => {
            tracing::debug!(?timeout, "redis pub/sub connect timed out");
            return Step::Retry;
        }
    };
    let Some(shared) = hub.upgrade() else {
        return Step::Closed;
    };
    // Under the control lock: an attach either came before (its topic is in the list) or
    // waits and finds the link up.
    let mut control = shared.control.lock().await;
    let topics = shared.local.topics();
    if !topics.is_empty() {
        let channels: Vec<String> = topics.iter().map(|t| shared.names.channel(t)).collect();
        let after = shared.options.command_timeout.max(Duration::from_millis(
            u64::try_from(channels.len()).unwrap_or(u64::MAX),
        ));
        match tokio::time::timeout(after, sink.subscribe(&channels)).await {
            Ok(Ok(())) => {}
            _ => {
                tracing::debug!("redis SUBSCRIBE after connecting failed");
                return Step::Retry;
            }
        }
    }
    let broken = Arc::new(Notify::new());
    control.subscribed = topics.iter().cloned().collect();
    control.link = Some(Link {
        sink: sink.clone(),
        broken: broken.clone(),
    });
    shared.linked.send_replace(true);
    bump(&shared.stats.links, 1);
    tracing::info!(node = %shared.node, topics = control.subscribed.len(), "redis pub/sub link up");
    Step::Linked(sink, stream, broken, topics)
}

/// Reads until the connection fails or is dropped (false) or the hub is (true).
async fn read(
    hub: &Weak<Shared>,
    mut sink: redis::aio::PubSubSink,
    mut stream: redis::aio::PubSubStream,
    broken: &Notify,
    closed: &mut watch::Receiver<()>,
) -> bool {
    let Some((interval, timeout)) = hub
        .upgrade()
        .map(|h| (h.options.ping_interval, h.options.command_timeout))
    else {
        return true;
    };
    // The ping runs beside the reader, so messages keep flowing while it waits.
    let pinger = async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
    };
    tokio::pin!(pinger);
    loop {
        tokio::select! {
            _ = closed.changed() => return true,
            () = broken.notified() => return false,
            () = &mut pinger => return false,
            message = stream.next() => {
                let Some(message) = message else { return false };
                let Some(shared) = hub.upgrade() else { return true };
                shared.receive(message.get_channel_name(), message.get_payload_bytes());
            }
        }
    }
}

//! The keeper: makes what this node holds in Redis follow its local subscribers. On every
//! change of a topic's subscribers it unsubscribes a topic left without any and removes
//! members that left (or adds ones whose join failed); every third of the presence TTL, and
//! after the link comes back, it refreshes all of this node's members, which also sweeps
//! members whose node stopped refreshing them.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use mux_tokio::topic::TopicWatch;
use tokio::sync::{watch, Notify};

use super::{Control, Shared};
use crate::{BrokerError, RedisOptions};

/// Members per script call at most, so one call stays short for Redis.
const CHUNK: usize = 256;

enum Work {
    Changed(Vec<String>),
    Refresh,
}

/// Runs until the hub is dropped.
pub(super) async fn keeper(
    hub: Weak<Shared>,
    mut changes: TopicWatch,
    mut closed: watch::Receiver<()>,
    relinked: Arc<Notify>,
) {
    let Some(period) = hub.upgrade().map(|h| h.refresh_period()) else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let work = tokio::select! {
            _ = closed.changed() => return,
            topics = changes.changed() => Work::Changed(topics),
            _ = tick.tick() => Work::Refresh,
            () = relinked.notified() => {
                if let Some(shared) = hub.upgrade() {
                    let mut con = shared.commands.clone();
                    if let Err(e) = shared.bounded(shared.scripts.load(&mut con)).await {
                        tracing::debug!(error = %e, "loading the scripts failed; EVAL will");
                    }
                }
                Work::Refresh
            }
        };
        let Some(shared) = hub.upgrade() else { return };
        match work {
            Work::Changed(topics) => shared.reconcile(topics, false).await,
            Work::Refresh => {
                let topics = shared.held_topics().await;
                shared.reconcile(topics, true).await;
            }
        }
    }
}

impl Shared {
    /// Presence entries live two thirds of the TTL and are refreshed every third, so one
    /// late refresh is tolerated and a dead node's members are swept within the TTL.
    pub(super) fn refresh_period(&self) -> Duration {
        self.options
            .presence_ttl
            .checked_div(3)
            .unwrap_or_default()
            .max(Duration::from_millis(10))
    }

    fn entry_lifetime_ms(&self) -> u64 {
        RedisOptions::millis(
            self.options
                .presence_ttl
                .saturating_mul(2)
                .checked_div(3)
                .unwrap_or_default(),
        )
    }

    /// Every topic this node has anything for: subscribers, a subscription, members.
    async fn held_topics(&self) -> Vec<String> {
        let mut topics: HashSet<String> = self.local.topics().into_iter().collect();
        let control = self.control.lock().await;
        topics.extend(control.subscribed.iter().cloned());
        topics.extend(control.registered.keys().cloned());
        topics.into_iter().collect()
    }

    /// Brings each topic's subscription and presence in line with its local subscribers;
    /// `refresh` also refreshes every member (and sweeps expired ones from other nodes).
    pub(super) async fn reconcile(&self, topics: Vec<String>, refresh: bool) {
        for topic in topics {
            // One topic at a time under the lock, so attaches wait for one topic at most.
            let mut control = self.control.lock().await;
            if self.local.subscriber_count(&topic) == 0 {
                self.unsubscribe(&mut control, &topic).await;
            } else if refresh {
                self.subscribe(&mut control, &topic).await;
            }
            if self.presence_of(&topic).is_some() || control.registered.contains_key(&topic) {
                self.sync_presence(&mut control, &topic, refresh).await;
            }
        }
    }

    async fn sync_presence(&self, control: &mut Control, topic: &str, refresh: bool) {
        if control.link.is_none() {
            // Redis is away; the refresh after the link is back catches up.
            return;
        }
        let current: HashSet<String> = if self.presence_of(topic).is_some() && !control.leaving {
            self.local
                .members(topic)
                .into_iter()
                .map(|(m, _)| m)
                .collect()
        } else {
            HashSet::new()
        };
        let registered = control.registered.get(topic).cloned().unwrap_or_default();
        let gone: Vec<String> = registered.difference(&current).cloned().collect();
        for chunk in gone.chunks(CHUNK) {
            match self.leave(topic, chunk).await {
                Ok(()) => {
                    if let Some(held) = control.registered.get_mut(topic) {
                        for member in chunk {
                            held.remove(member);
                        }
                    }
                }
                Err(e) => tracing::warn!(topic, error = %e, "presence leave failed; retried"),
            }
        }
        let touch: Vec<String> = if refresh {
            current.iter().cloned().collect()
        } else {
            current.difference(&registered).cloned().collect()
        };
        for chunk in touch.chunks(CHUNK) {
            match self.touch(topic, chunk, None).await {
                Ok(_) => control
                    .registered
                    .entry(topic.to_owned())
                    .or_default()
                    .extend(chunk.iter().cloned()),
                Err(e) => tracing::warn!(topic, error = %e, "presence refresh failed; retried"),
            }
        }
        if control.registered.get(topic).is_some_and(HashSet::is_empty) {
            control.registered.remove(topic);
        }
    }

    /// Runs the touch script: sweep, list (if `list`), add or refresh `members`.
    pub(super) async fn touch(
        &self,
        topic: &str,
        members: &[String],
        list: Option<usize>,
    ) -> Result<(u64, Vec<String>), BrokerError> {
        let entries = self.names.entries(topic);
        let counts = self.names.members(topic);
        let channel = self.names.channel(topic);
        let lifetime = self.entry_lifetime_ms();
        let keys_lifetime = RedisOptions::millis(self.options.presence_ttl.saturating_mul(3));
        let max = list.map_or(-1, |m| i64::try_from(m).unwrap_or(i64::MAX));
        let mut con = self.commands.clone();
        self.bounded(self.scripts.touch.run(&mut con, 2, |c| {
            c.arg(&entries)
                .arg(&counts)
                .arg(&channel)
                .arg(&self.node)
                .arg(lifetime)
                .arg(keys_lifetime)
                .arg(max)
                .arg(members);
        }))
        .await
    }

    async fn leave(&self, topic: &str, members: &[String]) -> Result<(), BrokerError> {
        let entries = self.names.entries(topic);
        let counts = self.names.members(topic);
        let channel = self.names.channel(topic);
        let mut con = self.commands.clone();
        let _: i64 = self
            .bounded(self.scripts.leave.run(&mut con, 2, |c| {
                c.arg(&entries)
                    .arg(&counts)
                    .arg(&channel)
                    .arg(&self.node)
                    .arg(members);
            }))
            .await?;
        Ok(())
    }

    /// Removes every presence entry of this node (see `RedisHub::leave_all`).
    pub(super) async fn leave_all(&self) -> Result<(), BrokerError> {
        let mut control = self.control.lock().await;
        // From now on neither an attach nor a refresh adds this node's members again.
        control.leaving = true;
        let registered = std::mem::take(&mut control.registered);
        let mut result = Ok(());
        for (topic, members) in registered {
            let members: Vec<String> = members.into_iter().collect();
            for chunk in members.chunks(CHUNK) {
                if let Err(e) = self.leave(&topic, chunk).await {
                    result = Err(e);
                }
            }
        }
        result
    }
}

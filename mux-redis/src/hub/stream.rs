//! One stream per topic across nodes. Redis numbers a topic's messages (its epoch and
//! sequence, in the publish script) and keeps its history, and every node's `LocalHub`
//! follows that stream (`LocalHub::publish_at`), so an offset names the same message on every
//! node and a subscriber resumes on any of them. Before a session attaches, the node brings
//! its local stream to Redis's where it may lag (`LocalHub::sync`): a topic it does not follow
//! live yet, or a resumption whose missed messages this node never had.
//!
//! A message whose publish failed is not in Redis's stream. This node still hands it to its
//! own subscribers, in a stream of its own (a node-local epoch), so that its offsets never
//! collide with Redis's; the next message Redis numbers brings the node back to Redis's
//! epoch. Both moves are epoch changes: subscribers see a position event and a gap of unknown
//! count (spec/topics.md#resuming).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use mux_tokio::topic::{Epoch, PublishReport, StreamPosition};

use super::{bump, lock, Control, Shared};
use crate::{BrokerError, RedisOptions};

/// What Redis holds of a topic's stream.
#[derive(Debug)]
struct Read {
    /// Its epoch and last number.
    position: StreamPosition,
    /// Kept messages in the range asked for, in order.
    backlog: Vec<(u64, Bytes)>,
}

impl Shared {
    /// The topic's history bounds (every node configures a topic alike): length and age.
    pub(super) fn history_of(&self, topic: &str) -> (usize, Duration) {
        lock(&self.topics)
            .get(topic)
            .map_or((0, Duration::ZERO), |o| (o.history_len, o.history_age))
    }

    /// Redis's stream of `topic`: its position, and what its history holds after `after`
    /// (in epoch `after_epoch`, or from the start of the history if Redis's epoch is another)
    /// up to `upto` (or the end).
    async fn read_stream(
        &self,
        topic: &str,
        after: Option<StreamPosition>,
        upto: Option<u64>,
    ) -> Result<Read, BrokerError> {
        let (max_len, max_age) = self.history_of(topic);
        let sequence = self.names.sequence(topic);
        let history = self.names.history(topic);
        let signed = |n: Option<u64>| n.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let from = signed(after.map(|p| p.offset));
        let from_epoch = after.map_or_else(String::new, |p| p.epoch.get().to_string());
        let until = signed(upto);
        let ttl = RedisOptions::millis(self.options.sequence_ttl);
        let age = RedisOptions::millis(max_age);
        let mut con = self.commands.clone();
        let (epoch, last, flat) = self
            .bounded(
                self.scripts
                    .read
                    .run::<(u64, u64, Vec<Vec<u8>>)>(&mut con, 2, |c| {
                        c.arg(&sequence)
                            .arg(&history)
                            .arg(from)
                            .arg(until)
                            .arg(max_len)
                            .arg(age)
                            .arg(ttl)
                            .arg(&from_epoch);
                    }),
            )
            .await?;
        let mut backlog = Vec::with_capacity(flat.len().checked_div(2).unwrap_or(0));
        let mut fields = flat.into_iter();
        while let (Some(offset), Some(payload)) = (fields.next(), fields.next()) {
            let offset = std::str::from_utf8(&offset)
                .ok()
                .and_then(|o| o.parse().ok())
                .ok_or(BrokerError::Reply("a history entry without a numeric id"))?;
            backlog.push((offset, Bytes::from(payload)));
        }
        Ok(Read {
            position: StreamPosition::new(Epoch::new(epoch), last),
            backlog,
        })
    }

    /// Whether this node follows `topic`'s stream live: it has subscribers of it, its link is
    /// subscribed, and its local stream is Redis's (not the node-local one of failed
    /// publishes).
    fn follows(&self, control: &Control, topic: &str) -> bool {
        let here = self.local.position(topic);
        let offline = lock(&self.offline).get(topic).copied();
        self.local.subscriber_count(topic) > 0
            && control.subscribed.contains(topic)
            && here.is_some_and(|p| Some(p.epoch) != offline)
    }

    /// Brings this node's stream of `topic` to Redis's before a session that starts at
    /// `resume` (or fresh) attaches. Called under the control lock after the link subscribed
    /// the topic, so whatever Redis numbers after the read arrives live (and whatever the
    /// read returned that also arrives live is dropped as stale).
    ///
    /// A fresh subscriber of a topic this node follows needs nothing. Otherwise one read:
    /// Redis's position and the messages after the resume position (the whole history when
    /// the resume position is of another epoch, so a reset replays everything kept). While
    /// following, the read stops at this node's last offset and the node keeps its position:
    /// raising it would turn messages still on their way over the link into gaps for the
    /// subscribers already here. When Redis does not answer within the command timeout, or
    /// the link is down (Redis is most likely away: attaches then do not each wait for the
    /// timeout), the subscriber starts from this node's own stream (a position event and a
    /// gap of unknown count if its epoch is not this node's).
    pub(super) async fn catch_up(
        &self,
        control: &Control,
        topic: &str,
        resume: Option<StreamPosition>,
    ) {
        let following = self.follows(control, topic);
        if following && resume.is_none() {
            return;
        }
        if control.link.is_none() {
            bump(&self.stats.read_failures, 1);
            tracing::debug!(topic, "redis link down; attaching from this node's stream");
            return;
        }
        let here = self.local.position(topic);
        let upto = if following {
            here.map(|p| p.offset)
        } else {
            None
        };
        match self.read_stream(topic, resume, upto).await {
            Ok(read) => {
                let position = match here {
                    Some(p) if following && p.epoch == read.position.epoch => p,
                    _ => read.position,
                };
                self.local.sync(topic, position, read.backlog);
            }
            Err(e) => {
                bump(&self.stats.read_failures, 1);
                tracing::warn!(topic, error = %e, "reading the topic's stream from redis failed; attaching from this node's");
            }
        }
    }

    /// Moves this node's subscribers of `topics` through what was published while its link
    /// was down, as the link comes back (before it reads anything from the new connection,
    /// which queues what arrives meanwhile). One read per topic of what Redis's history
    /// holds after this node's last offset, at most the history's length, each bounded by
    /// the command timeout, a few at a time: each topic's subscribers get the messages they
    /// missed in order, then the newer ones live, and a gap only for what the history no
    /// longer holds. Another epoch in Redis (it lost the stream, or this node's stream is
    /// its own after failed publishes) is the reset that epoch change always is. A topic
    /// without a history, or a read that fails, is left as it was: the first live message
    /// shows the hole as a gap with its exact count.
    pub(super) async fn recover(&self, topics: Vec<String>) {
        /// Reads in flight at once: enough to overlap round trips, few enough that the
        /// command connection still serves attaches and publishes in between.
        const READS: usize = 16;
        futures_util::stream::iter(topics)
            .for_each_concurrent(READS, |topic| async move {
                self.recover_topic(&topic).await;
            })
            .await;
    }

    async fn recover_topic(&self, topic: &str) {
        let Some(here) = self.local.position(topic) else {
            return;
        };
        if self.local.subscriber_count(topic) == 0 {
            return;
        }
        match self.read_stream(topic, Some(here), None).await {
            Ok(read) => {
                // Read just before the sync: what this node delivered while the read was on
                // its way (its own publishes) is not counted twice.
                let before = self.local.position(topic).unwrap_or(here);
                let same = before.epoch == read.position.epoch;
                // The stream goes up to the newest message the history returned, not to
                // Redis's last offset: what Redis numbered after that newest one was not in
                // the history only because the topic keeps none (or the read raced it), and
                // may still be on its way over the new link, which delivers it live; the
                // offsets it never brings show as a gap before the next one it does.
                let Some(reached) = read.backlog.iter().map(|(offset, _)| *offset).max() else {
                    if !same {
                        // Another epoch with nothing kept: the reset, at its start.
                        let start = StreamPosition::new(read.position.epoch, 0);
                        self.local.sync(topic, start, std::iter::empty());
                    }
                    return;
                };
                if same && reached > before.offset {
                    let kept = read
                        .backlog
                        .iter()
                        .filter(|(offset, _)| *offset > before.offset)
                        .count();
                    let kept = u64::try_from(kept).unwrap_or(u64::MAX);
                    let lost = reached.saturating_sub(before.offset).saturating_sub(kept);
                    bump(&self.stats.missed, lost);
                }
                let position = StreamPosition::new(read.position.epoch, reached);
                self.local.sync(topic, position, read.backlog);
            }
            Err(e) => {
                bump(&self.stats.read_failures, 1);
                tracing::warn!(topic, error = %e, "reading what the link missed from redis failed; its subscribers get a gap");
            }
        }
    }

    /// Before this node delivers its own message `at` while its link is down: if offsets
    /// between this node's last one and `at` are missing here (other nodes published them),
    /// reads what Redis's history holds of them (one read, within the command timeout) and
    /// syncs it, so that the subscribers get them before `at` and a gap only for what the
    /// history lost. A failed read leaves the hole to `at`'s delivery: an exact gap.
    pub(super) async fn fill_before(&self, topic: &str, at: StreamPosition) {
        let Some(here) = self.local.position(topic) else {
            return;
        };
        if here.epoch != at.epoch || at.offset <= here.offset.saturating_add(1) {
            return;
        }
        let upto = at.offset.saturating_sub(1);
        match self.read_stream(topic, Some(here), Some(upto)).await {
            Ok(read) if read.position.epoch == at.epoch => {
                // Up to the newest message returned, as `recover_topic` does; a hole after
                // it is `at`'s delivery's gap.
                let Some(reached) = read.backlog.iter().map(|(offset, _)| *offset).max() else {
                    return;
                };
                let before = self.local.position(topic).unwrap_or(here);
                if before.epoch == at.epoch && before.offset < reached {
                    let kept = read
                        .backlog
                        .iter()
                        .filter(|(offset, _)| *offset > before.offset)
                        .count();
                    let kept = u64::try_from(kept).unwrap_or(u64::MAX);
                    bump(
                        &self.stats.missed,
                        reached.saturating_sub(before.offset).saturating_sub(kept),
                    );
                }
                self.local
                    .sync(topic, StreamPosition::new(at.epoch, reached), read.backlog);
            }
            // Redis moved to another epoch since: `at`'s delivery is the reset.
            Ok(_) => {}
            Err(e) => {
                bump(&self.stats.read_failures, 1);
                tracing::debug!(topic, error = %e, "reading the messages before this node's own from redis failed; a gap");
            }
        }
    }

    /// Makes sure this node's `LocalHub` holds `topic` (idle if it has no subscribers), so
    /// that messages arriving before a subscriber is on it are kept in its stream.
    pub(super) fn hold(&self, topic: &str) {
        if self.local.position(topic).is_none() {
            // Any epoch: the read that follows (or the first message) replaces it.
            self.local.sync(
                topic,
                StreamPosition::new(Epoch::random(), 0),
                std::iter::empty(),
            );
        }
    }

    /// Hands a message Redis numbered to this node's subscribers, at its place in the stream
    /// (a hole before it is a gap for them, counted in the stats). A topic held without
    /// subscribers (an attach under way, or one just undone) keeps it in its stream.
    pub(super) fn deliver_numbered(
        &self,
        topic: &str,
        at: StreamPosition,
        message: Bytes,
    ) -> PublishReport {
        if let Some(here) = self.local.position(topic) {
            let next = here.offset.saturating_add(1);
            let watched = self.local.subscriber_count(topic) > 0;
            if watched && here.epoch == at.epoch && at.offset > next {
                bump(&self.stats.missed, at.offset.saturating_sub(next));
            }
        }
        self.local.publish_at(topic, at, message)
    }

    /// Hands a message Redis did not number (its publish failed) to this node's subscribers,
    /// in this node's own epoch for the topic (entered first if the stream is Redis's).
    pub(super) fn deliver_unnumbered(&self, topic: &str, message: Bytes) -> PublishReport {
        if self.local.subscriber_count(topic) == 0 {
            return PublishReport::default();
        }
        // Held across the switch and the publish, so two failed publishes enter one epoch.
        let mut offline = lock(&self.offline);
        let here = self.local.position(topic).map(|p| p.epoch);
        if here.is_none() || here != offline.get(topic).copied() {
            let epoch = Epoch::random();
            offline.insert(topic.to_owned(), epoch);
            self.local
                .sync(topic, StreamPosition::new(epoch, 0), std::iter::empty());
        }
        self.local.publish(topic, message)
    }
}

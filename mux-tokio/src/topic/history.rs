//! A topic's stream: its epoch, the offset of its last message, and a bounded history of the
//! last messages (by count and age) for subscribers that resume (spec/topics.md#history).
//! Pure: time is an argument, and a new epoch comes from the caller.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::envelope;
use super::{Epoch, StreamPosition};

/// One kept message: its offset, when it was published, and its encoded event.
#[derive(Debug, Clone)]
struct Entry {
    offset: u64,
    at: Instant,
    event: Bytes,
}

/// How a subscription starts (spec/topics.md#resuming): the position event it gets first,
/// whether a gap of unknown count follows, and the offsets to replay from the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    /// The position event.
    pub(crate) position: StreamPosition,
    /// The epoch changed (or the position was ahead of the stream): a gap of unknown count
    /// follows the position.
    pub(crate) unknown_gap: bool,
    /// The first offset to deliver.
    pub(crate) next: u64,
    /// The last offset to deliver from the history; later ones arrive live.
    pub(crate) until: u64,
}

/// What a subscriber at offset `next` gets next while it replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Message `next`, from the history.
    Message(Bytes),
    /// This many offsets from `next` on are not in the history: one gap event.
    Gap(u64),
}

/// What recording a message placed by a broker did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placed {
    /// It follows the last one: deliver its event.
    Appended(Bytes),
    /// Its offset is not after the last one (a duplicate): deliver nothing.
    Stale,
    /// It starts a new epoch: subscribers restart as `Start` says, then get its event.
    Restarted(Start, Bytes),
}

#[derive(Debug)]
pub(crate) struct History {
    epoch: Epoch,
    last: u64,
    /// Offsets strictly increasing, all at most `last`; at most `max_len` of them.
    entries: VecDeque<Entry>,
    max_len: usize,
    max_age: Duration,
}

impl History {
    pub(crate) fn new(epoch: Epoch, max_len: usize, max_age: Duration) -> Self {
        History {
            epoch,
            last: 0,
            entries: VecDeque::new(),
            max_len,
            max_age,
        }
    }

    pub(crate) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The stream's position: its epoch and the offset of its last message.
    pub(crate) fn position(&self) -> StreamPosition {
        StreamPosition::new(self.epoch, self.last)
    }

    /// Messages kept now.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Forgets everything and starts epoch `epoch` at offset 0.
    pub(crate) fn restart(&mut self, epoch: Epoch) {
        self.epoch = epoch;
        self.last = 0;
        self.entries.clear();
    }

    /// Gives `payload` the next offset and keeps it; its offset and encoded event. `None`
    /// when the epoch has used every offset: the caller restarts with a new epoch.
    pub(crate) fn append(&mut self, payload: &[u8], now: Instant) -> Option<(u64, Bytes)> {
        let offset = self.last.checked_add(1)?;
        self.last = offset;
        let event = envelope::message(offset, payload);
        self.keep(offset, event.clone(), now);
        Some((offset, event))
    }

    /// Records a message a broker placed at `position` (a multi-node hub's offsets).
    pub(crate) fn place(
        &mut self,
        position: StreamPosition,
        payload: &[u8],
        now: Instant,
    ) -> Placed {
        let restarted = (position.epoch != self.epoch).then(|| {
            // The new epoch as it stood just before this message: what came before it in
            // that epoch is unknown here.
            self.restart(position.epoch);
            self.last = position.offset.saturating_sub(1);
            self.reset_start(now)
        });
        if restarted.is_none() && position.offset <= self.last {
            return Placed::Stale;
        }
        self.last = position.offset;
        let event = envelope::message(position.offset, payload);
        self.keep(position.offset, event.clone(), now);
        match restarted {
            Some(start) => Placed::Restarted(start, event),
            None => Placed::Appended(event),
        }
    }

    /// Brings the stream to a broker's: its epoch (restarting if it differs; true then), a
    /// last offset at least `position`'s, and the messages the broker still holds, merged
    /// with those already kept.
    pub(crate) fn sync(
        &mut self,
        position: StreamPosition,
        backlog: impl IntoIterator<Item = (u64, Bytes)>,
        now: Instant,
    ) -> bool {
        let restarted = position.epoch != self.epoch;
        if restarted {
            self.restart(position.epoch);
        }
        self.last = self.last.max(position.offset);
        if self.max_len == 0 {
            return restarted;
        }
        let last = self.last;
        let mut merged: Vec<Entry> = self.entries.drain(..).collect();
        merged.extend(
            backlog
                .into_iter()
                .filter(|(offset, _)| (1..=last).contains(offset))
                .map(|(offset, payload)| Entry {
                    offset,
                    at: now,
                    event: envelope::message(offset, &payload),
                }),
        );
        // Stable: an entry already kept comes before a backlog copy of it, and wins.
        merged.sort_by_key(|e| e.offset);
        merged.dedup_by_key(|e| e.offset);
        self.entries = merged.into();
        self.evict(now);
        restarted
    }

    /// How a subscription that resumes from `from` (or starts fresh) begins.
    pub(crate) fn start(&mut self, from: Option<StreamPosition>, now: Instant) -> Start {
        self.evict(now);
        match from {
            None => Start {
                position: self.position(),
                unknown_gap: false,
                next: self.last.saturating_add(1),
                until: self.last,
            },
            Some(p) if p.epoch == self.epoch && p.offset <= self.last => Start {
                position: p,
                unknown_gap: false,
                next: p.offset.saturating_add(1),
                until: self.last,
            },
            // Another epoch, or a position the stream never reached: what was missed cannot
            // be counted, so replay everything kept after a gap of unknown count.
            Some(_) => self.reset_start(now),
        }
    }

    /// How a subscriber whose position is lost starts (another epoch, or a stream that
    /// restarted under it): everything kept, after a gap of unknown count.
    pub(crate) fn reset_start(&mut self, now: Instant) -> Start {
        self.evict(now);
        let oldest = self.oldest();
        Start {
            position: StreamPosition::new(self.epoch, oldest.saturating_sub(1)),
            unknown_gap: true,
            next: oldest,
            until: self.last,
        }
    }

    /// What a subscriber of `epoch` at offset `next` gets next, replaying up to `until`;
    /// `None` once `next` is past `until`. A subscriber of another epoch finds nothing here.
    pub(crate) fn fill(
        &mut self,
        epoch: Epoch,
        next: u64,
        until: u64,
        now: Instant,
    ) -> Option<Fill> {
        if next > until {
            return None;
        }
        let end = until.saturating_add(1);
        if epoch != self.epoch {
            return Some(Fill::Gap(end.saturating_sub(next)));
        }
        self.evict(now);
        let at = self.entries.partition_point(|e| e.offset < next);
        match self.entries.get(at) {
            Some(e) if e.offset == next => Some(Fill::Message(e.event.clone())),
            found => {
                let kept = found.map_or(end, |e| e.offset.min(end));
                Some(Fill::Gap(kept.saturating_sub(next)))
            }
        }
    }

    /// The oldest offset still kept, or the next one when nothing is.
    fn oldest(&self) -> u64 {
        self.entries
            .front()
            .map_or(self.last.saturating_add(1), |e| e.offset)
    }

    fn keep(&mut self, offset: u64, event: Bytes, now: Instant) {
        if self.max_len == 0 {
            return;
        }
        self.entries.push_back(Entry {
            offset,
            at: now,
            event,
        });
        self.evict(now);
    }

    /// Drops what is over the count or `max_age` old.
    fn evict(&mut self, now: Instant) {
        while self.entries.len() > self.max_len {
            self.entries.pop_front();
        }
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) >= self.max_age)
        {
            self.entries.pop_front();
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::topic::{decode, TopicEvent};

    /// What a subscriber replays from `start`: the offsets of the messages it gets, and the
    /// gaps, in order, as the hub's pump reads them.
    fn replay(history: &mut History, start: Start, now: Instant) -> Vec<Result<u64, u64>> {
        let mut out = Vec::new();
        let mut next = start.next;
        while let Some(fill) = history.fill(start.position.epoch, next, start.until, now) {
            match fill {
                Fill::Message(event) => match decode(&event) {
                    Ok(TopicEvent::Message { offset, .. }) => {
                        assert_eq!(offset, next);
                        out.push(Ok(offset));
                        next += 1;
                    }
                    other => panic!("not a message: {other:?}"),
                },
                Fill::Gap(n) => {
                    assert!(n > 0, "an empty gap");
                    out.push(Err(n));
                    next += n;
                }
            }
            assert!(out.len() < 100_000, "replay does not end");
        }
        out
    }

    #[derive(Debug, Clone)]
    enum Op {
        Publish(u8),
        Wait(u16),
        Resume(u16),
        ResumeOtherEpoch,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => any::<u8>().prop_map(Op::Publish),
            2 => (0u16..400).prop_map(Op::Wait),
            2 => any::<u16>().prop_map(Op::Resume),
            1 => Just(Op::ResumeOtherEpoch),
        ]
    }

    proptest! {
        /// Offsets count up by one; the history never holds more than its bound nor anything
        /// `max_age` old; a resumption gets exactly the suffix it missed that is still kept,
        /// after one gap counting what is not.
        #[test]
        fn history_keeps_its_bounds_and_resumes_exactly_the_suffix(
            max_len in 0usize..20,
            max_age_ms in 1u64..1000,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let epoch = Epoch::new(7);
            let max_age = Duration::from_millis(max_age_ms);
            let mut history = History::new(epoch, max_len, max_age);
            let mut now = Instant::now();
            // Every publish: its offset and when.
            let mut published: Vec<(u64, Instant)> = Vec::new();
            for op in ops {
                match op {
                    Op::Publish(len) => {
                        let (offset, event) = history.append(&vec![len; usize::from(len)], now).unwrap();
                        prop_assert_eq!(offset, published.len() as u64 + 1);
                        let payload_len = match decode(&event) {
                            Ok(TopicEvent::Message { offset: o, payload }) => {
                                prop_assert_eq!(o, offset);
                                payload.len()
                            }
                            other => panic!("{other:?}"),
                        };
                        prop_assert_eq!(payload_len, usize::from(len));
                        published.push((offset, now));
                    }
                    Op::Wait(ms) => now += Duration::from_millis(u64::from(ms)),
                    Op::Resume(at) => {
                        let last = published.len() as u64;
                        let from = u64::from(at) % (last + 1);
                        let start = history.start(Some(StreamPosition::new(epoch, from)), now);
                        prop_assert_eq!(start.position, StreamPosition::new(epoch, from));
                        prop_assert!(!start.unknown_gap);
                        // What a model of the rules keeps: the last `max_len`, under `max_age`.
                        let kept: Vec<u64> = published
                            .iter()
                            .rev()
                            .take(max_len)
                            .filter(|(_, at)| now.duration_since(*at) < max_age)
                            .map(|(o, _)| *o)
                            .filter(|o| *o > from)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        let got = replay(&mut history, start, now);
                        let lost = last - from - kept.len() as u64;
                        let mut expected: Vec<Result<u64, u64>> = Vec::new();
                        if lost > 0 {
                            expected.push(Err(lost));
                        }
                        expected.extend(kept.iter().map(|o| Ok(*o)));
                        prop_assert_eq!(got, expected);
                    }
                    Op::ResumeOtherEpoch => {
                        let start = history.start(Some(StreamPosition::new(Epoch::new(8), 3)), now);
                        prop_assert!(start.unknown_gap);
                        prop_assert_eq!(start.position.epoch, epoch);
                        let got = replay(&mut history, start, now);
                        prop_assert!(got.iter().all(Result::is_ok), "only what is kept, no counted gap");
                        prop_assert_eq!(got.len(), history.len());
                        prop_assert_eq!(start.position.offset + got.len() as u64, published.len() as u64);
                    }
                }
                prop_assert!(history.len() <= max_len, "over the bound");
                let offsets: Vec<u64> = history.entries.iter().map(|e| e.offset).collect();
                prop_assert!(offsets.windows(2).all(|w| w[0] + 1 == w[1]), "not contiguous");
                prop_assert!(offsets.last().is_none_or(|o| *o == published.len() as u64));
                prop_assert_eq!(history.position().offset, published.len() as u64);
            }
        }

        /// A broker's messages (`place`) and backlog (`sync`) in any order give the same
        /// kept suffix as publishing them in order, with duplicates dropped.
        #[test]
        fn placed_and_synced_messages_merge_into_one_ordered_history(
            live in proptest::collection::vec(1u64..60, 0..40),
            backlog_from in 1u64..60,
        ) {
            let epoch = Epoch::new(1);
            let now = Instant::now();
            let mut history = History::new(Epoch::new(99), 100, Duration::from_secs(60));
            let mut delivered = Vec::new();
            for (i, offset) in live.iter().enumerate() {
                let placed = history.place(StreamPosition::new(epoch, *offset), b"x", now);
                match placed {
                    Placed::Restarted(start, _) => {
                        prop_assert_eq!(i, 0);
                        prop_assert!(start.unknown_gap);
                        prop_assert_eq!(start.next, *offset);
                    }
                    Placed::Appended(_) => {}
                    Placed::Stale => continue,
                }
                delivered.push(*offset);
            }
            prop_assert!(delivered.windows(2).all(|w| w[0] < w[1]), "delivered out of order");
            let last = history.position().offset.max(backlog_from);
            let backlog = (backlog_from..=last).map(|o| (o, Bytes::from_static(b"x")));
            history.sync(StreamPosition::new(epoch, last), backlog, now);
            let offsets: Vec<u64> = history.entries.iter().map(|e| e.offset).collect();
            prop_assert!(offsets.windows(2).all(|w| w[0] < w[1]), "not ordered or duplicated");
            for o in backlog_from..=last {
                prop_assert!(offsets.contains(&o), "backlog offset {} missing", o);
            }
        }
    }

    #[test]
    fn a_stream_that_used_every_offset_asks_for_a_new_epoch() {
        let now = Instant::now();
        let mut history = History::new(Epoch::new(1), 4, Duration::from_secs(1));
        history.sync(StreamPosition::new(Epoch::new(1), u64::MAX), [], now);
        assert_eq!(history.append(b"x", now), None);
        history.restart(Epoch::new(2));
        assert_eq!(history.append(b"x", now).map(|(o, _)| o), Some(1));
    }
}

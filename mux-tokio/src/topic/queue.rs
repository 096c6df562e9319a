//! One subscriber's queue and where it stands in the topic's stream. Live events wait here
//! for room in the session; the messages between the subscriber's offset and the next queued
//! one are read from the history, or reported as one gap when history no longer holds them
//! (spec/topics.md#delivery, M-TOPIC-5).

use std::collections::VecDeque;

use bytes::Bytes;

use super::envelope;
use super::history::{Fill, Start};
use super::{Epoch, SlowConsumerPolicy};

/// What waits in a subscriber's queue.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A live message: its offset and its encoded event.
    Message { offset: u64, event: Bytes },
    /// Where the subscriber starts: the position event, and a gap of unknown count. Never
    /// dropped for room; a later restart replaces it.
    Start(Bytes),
    /// A presence event (join, leave, snapshot). Only joins and leaves may be dropped.
    Event { event: Bytes, droppable: bool },
    /// The stream restarted in another epoch: the subscriber moves there.
    Restart { epoch: Epoch, next: u64, until: u64 },
}

/// The items a subscription or a restarted stream begins with (spec/topics.md#resuming).
pub(crate) fn start_items(start: Start) -> impl Iterator<Item = Item> {
    let position = Item::Start(envelope::position(start.position));
    let unknown = start.unknown_gap.then(|| Item::Start(envelope::gap(None)));
    std::iter::once(position).chain(unknown)
}

/// The outcome of offering one item to one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    Dropped,
    Closed,
    Gone,
}

/// What sending the item `peek` returned does to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The front item (a start or presence event) was sent.
    Front,
    /// The front item, message `offset`, was sent.
    Message(u64),
    /// The next message was sent without passing through the queue: from the history, or
    /// handed straight to the session by a publish (`idle_at`).
    Replayed,
    /// A gap of this many was sent.
    Skipped(u64),
}

#[derive(Debug)]
pub(crate) struct Queue {
    items: VecDeque<Item>,
    capacity: usize,
    /// The stream the subscriber reads.
    epoch: Epoch,
    /// The offset of the next message it should get.
    next: u64,
    /// The last offset to read from the history rather than wait for live.
    until: u64,
    /// The queue overflowed under the close policy.
    pub(crate) overflowed: bool,
    /// The subscription ended.
    pub(crate) closed: bool,
    /// Attached with [`LocalHub::attach_held`](super::LocalHub::attach_held): nothing is
    /// sent before [`Subscription::release`](super::Subscription::release).
    pub(crate) held: bool,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Self {
        Queue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            epoch: Epoch::new(0),
            next: 1,
            until: 0,
            overflowed: false,
            closed: false,
            held: false,
        }
    }

    /// This queue, held (or not) until released.
    pub(crate) fn held(mut self, held: bool) -> Self {
        self.held = held;
        self
    }

    /// Adds an event the subscriber gets first, after its start events (position, unknown
    /// gap): a held subscription's first event.
    pub(crate) fn push_first(&mut self, event: Bytes) {
        let at = self
            .items
            .iter()
            .position(|i| !matches!(i, Item::Start(_) | Item::Restart { .. }))
            .unwrap_or(self.items.len());
        self.items.insert(
            at,
            Item::Event {
                event,
                droppable: false,
            },
        );
    }

    /// Where the subscription starts: its first events, and what to replay.
    pub(crate) fn begin(&mut self, start: Start) {
        self.epoch = start.position.epoch;
        self.next = start.next;
        self.until = start.until;
        self.items.extend(start_items(start));
    }

    /// Adds an event the subscriber must get before anything later (the presence snapshot).
    pub(crate) fn push_event(&mut self, event: Bytes) {
        self.items.push_back(Item::Event {
            event,
            droppable: false,
        });
    }

    /// Moves the subscriber's replay on to `until` in `epoch`: the stream now holds (or has
    /// lost for good) every message up to there, so none of them will arrive live, and the
    /// subscriber reads them from the history once it has sent what is queued before them. A
    /// restart still queued decides where the subscriber stands once it reaches it, so that
    /// is what moves on. Another epoch's subscriber is left alone: its restart is on the way.
    pub(crate) fn reach(&mut self, epoch: Epoch, until: u64) {
        let restart = self.items.iter_mut().rev().find_map(|i| match i {
            Item::Restart {
                epoch, until: to, ..
            } => Some((*epoch, to)),
            _ => None,
        });
        match restart {
            Some((queued, to)) if queued == epoch => *to = (*to).max(until),
            Some(_) => {}
            None if self.epoch == epoch => self.until = self.until.max(until),
            None => {}
        }
    }

    /// Whether live message `offset` of `epoch` is the very next thing this subscriber is
    /// to send: nothing queued before it, nothing to replay, not held and not ended. Then
    /// it may go to the session without passing through the queue; `advance(Step::Replayed)`
    /// records it.
    pub(crate) fn idle_at(&self, epoch: Epoch, offset: u64) -> bool {
        self.items.is_empty()
            && !self.held
            && !self.closed
            && !self.overflowed
            && self.epoch == epoch
            && self.next == offset
    }

    /// Live events waiting.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Adds `item` under the slow-consumer policy. The caller pumps.
    pub(crate) fn offer(&mut self, item: Item, policy: SlowConsumerPolicy) -> Offer {
        if self.closed || self.overflowed {
            return Offer::Gone;
        }
        // A restart voids what is queued from the old stream (its messages, its start): the
        // gap of unknown count that follows covers them. So restarts never pile up.
        if matches!(item, Item::Restart { .. }) {
            self.items.retain(|i| matches!(i, Item::Event { .. }));
            self.items.push_back(item);
            return Offer::Queued;
        }
        if self.items.len() < self.capacity {
            self.items.push_back(item);
            return Offer::Queued;
        }
        match policy {
            SlowConsumerPolicy::DropOldest => {
                // The oldest message first: it can still come from the history, or it
                // becomes a gap. Then a join or leave. The start events and the snapshot are
                // never dropped: with the restart mark they are at most four, so the queue
                // exceeds its bound by that at most.
                let oldest = self
                    .items
                    .iter()
                    .position(|i| matches!(i, Item::Message { .. }))
                    .or_else(|| {
                        self.items.iter().position(|i| {
                            matches!(
                                i,
                                Item::Event {
                                    droppable: true,
                                    ..
                                }
                            )
                        })
                    });
                let dropped = oldest.and_then(|at| self.items.remove(at)).is_some();
                self.items.push_back(item);
                if dropped {
                    Offer::Dropped
                } else {
                    Offer::Queued
                }
            }
            SlowConsumerPolicy::Close => {
                self.overflowed = true;
                self.items.clear();
                Offer::Closed
            }
        }
    }

    /// The next bytes to send and what sending them does, or `None` when there is nothing to
    /// send now. `history` answers [`History::fill`](super::history::History::fill) for the
    /// messages between the subscriber's offset and the next queued one.
    pub(crate) fn peek(
        &mut self,
        history: &mut dyn FnMut(Epoch, u64, u64) -> Option<Fill>,
    ) -> Option<(Bytes, Step)> {
        loop {
            let (epoch, next) = (self.epoch, self.next);
            let until = match self.items.front() {
                None => self.until,
                Some(Item::Restart { epoch, next, until }) => {
                    (self.epoch, self.next, self.until) = (*epoch, *next, *until);
                    self.items.pop_front();
                    continue;
                }
                Some(Item::Start(event) | Item::Event { event, .. }) => {
                    return Some((event.clone(), Step::Front));
                }
                // Already delivered from the history: drop the live copy.
                Some(Item::Message { offset, .. }) if *offset < next => {
                    self.items.pop_front();
                    continue;
                }
                Some(Item::Message { offset, event }) if *offset == next => {
                    return Some((event.clone(), Step::Message(*offset)));
                }
                // Messages before it were dropped from the queue, or are still to replay.
                Some(Item::Message { offset, .. }) => offset.saturating_sub(1),
            };
            return match history(epoch, next, until)? {
                Fill::Message(event) => Some((event, Step::Replayed)),
                Fill::Gap(n) => Some((envelope::gap(Some(n)), Step::Skipped(n))),
            };
        }
    }

    /// Records that what `peek` returned was sent.
    pub(crate) fn advance(&mut self, step: Step) {
        match step {
            Step::Front => drop(self.items.pop_front()),
            Step::Message(offset) => {
                self.items.pop_front();
                self.next = offset.saturating_add(1);
            }
            Step::Replayed => self.next = self.next.saturating_add(1),
            Step::Skipped(n) => self.next = self.next.saturating_add(n),
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
    use super::*;
    use crate::topic::{decode, StreamPosition, TopicEvent};

    fn message(offset: u64) -> Item {
        Item::Message {
            offset,
            event: envelope::message(offset, b"m"),
        }
    }

    fn restart(epoch: u64) -> Vec<Item> {
        let start = Start {
            position: StreamPosition::new(Epoch::new(epoch), 0),
            unknown_gap: true,
            next: 1,
            until: 0,
        };
        let mark = Item::Restart {
            epoch: start.position.epoch,
            next: start.next,
            until: start.until,
        };
        std::iter::once(mark).chain(start_items(start)).collect()
    }

    /// Sends everything `peek` gives, with no history; the events decoded.
    fn drain(q: &mut Queue) -> Vec<TopicEvent> {
        let mut out = Vec::new();
        while let Some((bytes, step)) =
            q.peek(&mut |_, next, until| (next <= until).then(|| Fill::Gap(until + 1 - next)))
        {
            out.push(decode(&bytes).unwrap());
            q.advance(step);
        }
        out
    }

    #[test]
    fn restarts_replace_what_the_old_stream_queued_and_never_pile_up() {
        let mut q = Queue::new(4);
        q.begin(Start {
            position: StreamPosition::new(Epoch::new(1), 0),
            unknown_gap: false,
            next: 1,
            until: 0,
        });
        for offset in 1..=10 {
            q.offer(message(offset), SlowConsumerPolicy::DropOldest);
        }
        assert!(q.len() <= 4 + 1, "{}", q.len());
        for epoch in 2..100 {
            for item in restart(epoch) {
                q.offer(item, SlowConsumerPolicy::DropOldest);
            }
            assert!(q.len() <= 4, "{} after restart {epoch}", q.len());
        }
        q.offer(message(1), SlowConsumerPolicy::DropOldest);
        assert_eq!(
            drain(&mut q),
            vec![
                TopicEvent::Position(StreamPosition::new(Epoch::new(99), 0)),
                TopicEvent::Gap(None),
                TopicEvent::Message {
                    offset: 1,
                    payload: Bytes::from_static(b"m")
                },
            ]
        );
    }

    #[test]
    fn reaching_an_offset_replays_up_to_it_after_what_is_queued_and_before_newer_ones() {
        let mut q = Queue::new(8);
        q.begin(Start {
            position: StreamPosition::new(Epoch::new(1), 0),
            unknown_gap: false,
            next: 1,
            until: 0,
        });
        q.offer(message(1), SlowConsumerPolicy::DropOldest);
        // Offsets 2 to 5 came from a broker's history (this drain has none: a gap); another
        // epoch's offsets move nothing.
        q.reach(Epoch::new(1), 5);
        q.reach(Epoch::new(2), 9);
        q.offer(message(6), SlowConsumerPolicy::DropOldest);
        let events = drain(&mut q);
        assert_eq!(events[2], TopicEvent::Gap(Some(4)));
        assert!(matches!(events[3], TopicEvent::Message { offset: 6, .. }));
        assert_eq!(events.len(), 4);
        // A queued restart is where the subscriber will stand: that is what moves on.
        for item in restart(3) {
            q.offer(item, SlowConsumerPolicy::DropOldest);
        }
        q.reach(Epoch::new(3), 2);
        let events = drain(&mut q);
        assert_eq!(events[1], TopicEvent::Gap(None));
        assert_eq!(events[2], TopicEvent::Gap(Some(2)));
        assert_eq!(events.len(), 3);
    }

    #[test]
    fn dropped_messages_become_one_gap_before_the_next_one() {
        let mut q = Queue::new(3);
        q.begin(Start {
            position: StreamPosition::new(Epoch::new(1), 0),
            unknown_gap: false,
            next: 1,
            until: 0,
        });
        let mut dropped = 0;
        for offset in 1..=10 {
            dropped += usize::from(
                q.offer(message(offset), SlowConsumerPolicy::DropOldest) == Offer::Dropped,
            );
        }
        let events = drain(&mut q);
        // The position holds one of the three places; 1 to 8 were dropped for 9 and 10.
        assert_eq!(events[1], TopicEvent::Gap(Some(8)));
        assert_eq!(dropped, 8);
        let offsets: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                TopicEvent::Message { offset, .. } => Some(*offset),
                _ => None,
            })
            .collect();
        assert_eq!(offsets, vec![9, 10]);
    }
}

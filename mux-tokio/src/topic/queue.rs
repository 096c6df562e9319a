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
    /// An event that is not a message (position, gap of unknown count, presence). Only
    /// presence events may be dropped.
    Event { event: Bytes, droppable: bool },
    /// The stream restarted in another epoch: the subscriber moves there.
    Restart { epoch: Epoch, next: u64, until: u64 },
}

/// The items a subscription or a restarted stream begins with (spec/topics.md#resuming).
pub(crate) fn start_items(start: Start) -> impl Iterator<Item = Item> {
    let position = Item::Event {
        event: envelope::position(start.position),
        droppable: false,
    };
    let unknown = start.unknown_gap.then(|| Item::Event {
        event: envelope::gap(None),
        droppable: false,
    });
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
    /// The front item (an event) was sent.
    Front,
    /// The front item, message `offset`, was sent.
    Message(u64),
    /// The next message was sent from the history.
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
        }
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

    /// Live events waiting.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Adds `item` under the slow-consumer policy. The caller pumps.
    pub(crate) fn offer(&mut self, item: Item, policy: SlowConsumerPolicy) -> Offer {
        if self.closed || self.overflowed {
            return Offer::Gone;
        }
        // A restart is not the subscriber's backlog: it always has a place.
        if self.items.len() < self.capacity || matches!(item, Item::Restart { .. }) {
            self.items.push_back(item);
            return Offer::Queued;
        }
        match policy {
            SlowConsumerPolicy::DropOldest => {
                // The oldest message first: it can still come from the history, or it
                // becomes a gap. Then a presence event. The start events are never dropped:
                // they are at most three, so the queue exceeds its bound by that at most.
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
                Some(Item::Event { event, .. }) => return Some((event.clone(), Step::Front)),
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

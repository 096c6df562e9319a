//! Counters for observability: read with `stats()`, export as the application likes.

use std::time::Duration;

use crate::code::CloseCode;

/// Per-session counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Whole messages handed to the transport.
    pub messages_sent: u64,
    /// Payload bytes handed to the transport.
    pub bytes_sent: u64,
    /// Whole messages received.
    pub messages_received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Times sending stopped for lack of credit.
    pub credit_stalls: u64,
    /// Total time spent stalled on credit.
    pub stalled: Duration,
    /// Times the session's rate limit was exceeded.
    pub rate_limit_hits: u64,
    /// Messages queued for sending now.
    pub send_queued_messages: u32,
    /// Bytes queued for sending now.
    pub send_queued_bytes: u64,
    /// Complete messages received and not yet read by the application.
    pub recv_queued_messages: u32,
    /// Bytes received and not yet read (complete and partial messages).
    pub recv_queued_bytes: u64,
    /// Send credit left: (messages, bytes).
    pub send_credit: (u32, u32),
    /// Receive credit the peer has left, as this side sees it: (messages, bytes).
    pub recv_credit: (u32, u32),
    /// The receive window: what the peer may have outstanding at most, (messages, bytes).
    /// While the session is open, `recv_credit` + held + `recv_unannounced` equals it,
    /// where held is (`recv_held_messages`, `recv_queued_bytes`).
    pub recv_window: (u32, u32),
    /// Credit the application freed by reading and not yet announced: (messages, bytes).
    pub recv_unannounced: (u32, u32),
    /// Messages holding receive credit: complete ones not yet read, plus the one being
    /// reassembled, if any.
    pub recv_held_messages: u32,
}

/// Distinct close codes remembered in [`ConnectionStats::closes_by_code`].
pub const CLOSE_CODE_SLOTS: usize = 24;

/// Per-connection counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Frames written by `poll_transmit`.
    pub frames_sent: u64,
    /// Frames decoded from the peer.
    pub frames_received: u64,
    /// WebSocket messages produced.
    pub transmits: u64,
    /// Whole DATA messages sent.
    pub messages_sent: u64,
    /// DATA payload bytes sent.
    pub bytes_sent: u64,
    /// Whole DATA messages received.
    pub messages_received: u64,
    /// DATA payload bytes received.
    pub bytes_received: u64,
    /// Sessions opened by either side (accepted).
    pub sessions_opened: u64,
    /// Sessions live now.
    pub sessions_live: u32,
    /// Peer OPENs refused.
    pub opens_refused: u64,
    /// Rate-limit hits on any session or the connection.
    pub rate_limit_hits: u64,
    /// Times a session stalled on credit.
    pub credit_stalls: u64,
    /// Control frames charged to the budget.
    pub control_frames_charged: u64,
    /// Late frames for closed sessions discarded.
    pub late_frames: u64,
    /// Bytes buffered for received data now (overhead included).
    pub recv_buffered: u64,
    /// Bytes queued for sending now (overhead included).
    pub send_buffered: u64,
    /// Sessions ended, by code (first [`CLOSE_CODE_SLOTS`] distinct codes; then `other_closes`).
    pub closes_by_code: [(u16, u64); CLOSE_CODE_SLOTS],
    /// Closes whose code did not fit in `closes_by_code`.
    pub other_closes: u64,
}

/// The counters a connection keeps. [`ConnectionStats`] adds the levels read off the
/// connection's state, and its close codes live in a vector that grows with the distinct
/// codes seen (a handful) rather than a 24-slot array in every connection (P7).
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnCounters {
    pub(crate) frames_sent: u64,
    pub(crate) frames_received: u64,
    pub(crate) transmits: u64,
    pub(crate) messages_sent: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) messages_received: u64,
    pub(crate) bytes_received: u64,
    pub(crate) sessions_opened: u64,
    pub(crate) opens_refused: u64,
    pub(crate) rate_limit_hits: u64,
    pub(crate) credit_stalls: u64,
    pub(crate) control_frames_charged: u64,
    pub(crate) late_frames: u64,
    /// Sessions ended, by code, in the order each code was first seen; at most
    /// [`CLOSE_CODE_SLOTS`] codes.
    closes: Vec<(u16, u64)>,
    other_closes: u64,
}

impl ConnCounters {
    pub(crate) fn record_close(&mut self, code: CloseCode) {
        if let Some(slot) = self.closes.iter_mut().find(|(c, _)| *c == code.0) {
            slot.1 = slot.1.saturating_add(1);
        } else if self.closes.len() < CLOSE_CODE_SLOTS {
            self.closes.push((code.0, 1));
        } else {
            self.other_closes = self.other_closes.saturating_add(1);
        }
    }

    /// The public counters; the caller fills in the levels.
    pub(crate) fn snapshot(&self) -> ConnectionStats {
        let mut closes_by_code = [(0, 0); CLOSE_CODE_SLOTS];
        for (slot, close) in closes_by_code.iter_mut().zip(&self.closes) {
            *slot = *close;
        }
        ConnectionStats {
            frames_sent: self.frames_sent,
            frames_received: self.frames_received,
            transmits: self.transmits,
            messages_sent: self.messages_sent,
            bytes_sent: self.bytes_sent,
            messages_received: self.messages_received,
            bytes_received: self.bytes_received,
            sessions_opened: self.sessions_opened,
            opens_refused: self.opens_refused,
            rate_limit_hits: self.rate_limit_hits,
            credit_stalls: self.credit_stalls,
            control_frames_charged: self.control_frames_charged,
            late_frames: self.late_frames,
            closes_by_code,
            other_closes: self.other_closes,
            ..ConnectionStats::default()
        }
    }
}

impl ConnectionStats {
    /// Sessions ended with `code`.
    pub fn closes(&self, code: CloseCode) -> u64 {
        self.closes_by_code
            .iter()
            .find(|(c, _)| *c == code.0)
            .map_or(0, |(_, n)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_keep_their_first_seen_order_and_overflow_into_other() {
        let mut counters = ConnCounters::default();
        counters.record_close(CloseCode::CANCELLED);
        counters.record_close(CloseCode::NORMAL);
        counters.record_close(CloseCode::CANCELLED);
        let stats = counters.snapshot();
        assert_eq!(stats.closes_by_code[0], (CloseCode::CANCELLED.0, 2));
        assert_eq!(stats.closes_by_code[1], (CloseCode::NORMAL.0, 1));
        assert_eq!(stats.closes(CloseCode::NORMAL), 1);
        for code in 0..100u16 {
            counters.record_close(CloseCode(4100 + code));
        }
        let stats = counters.snapshot();
        assert!(stats.closes_by_code.iter().all(|(c, _)| *c != 0));
        // 24 slots, two of them taken before the hundred new codes.
        assert_eq!(CLOSE_CODE_SLOTS, 24);
        assert_eq!(stats.other_closes, 100 - 22);
    }

    /// A connection's own state, held for its whole life (BENCHMARKS.md P7): 1,720 bytes
    /// with the 24-slot close-code array inline; 1,336 without it, and 16 more for the
    /// receive arena's pointer and timer.
    #[test]
    fn a_connection_stays_small() {
        let size = std::mem::size_of::<crate::Connection>();
        assert!(size <= 1352, "{size}");
    }
}

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

impl ConnectionStats {
    pub(crate) fn record_close(&mut self, code: CloseCode) {
        for slot in self.closes_by_code.iter_mut() {
            if slot.0 == code.0 {
                slot.1 = slot.1.saturating_add(1);
                return;
            }
            if slot.0 == 0 {
                *slot = (code.0, 1);
                return;
            }
        }
        self.other_closes = self.other_closes.saturating_add(1);
    }

    /// Sessions ended with `code`.
    pub fn closes(&self, code: CloseCode) -> u64 {
        self.closes_by_code
            .iter()
            .find(|(c, _)| *c == code.0)
            .map_or(0, |(_, n)| *n)
    }
}

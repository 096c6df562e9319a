//! Metrics through the `metrics` facade (feature `metrics`). Without the feature every
//! function here is empty and [`Stopwatch`] has no fields, so the calls compile to nothing;
//! with it, each event costs a facade call (an atomic load when no recorder is installed)
//! and a timed event one clock read at each end.
//!
//! Names follow `mux_*_total` for counters and `mux_*_seconds` for histograms. Labels come
//! from small fixed sets (close-code names, HTTP statuses, limit kinds, outcomes), never
//! principals, tokens, addresses or raw numbers a peer chooses, so cardinality is bounded
//! and nothing secret is exported. DEPLOYMENT.md ("Metrics") lists every series; the
//! Prometheus test scrapes an exporter and checks that list.

use std::time::Duration;
#[cfg(feature = "metrics")]
use std::time::Instant;

use mux_proto::{CloseCode, LimitKind};

/// Times one interval (a write and its flush, a send waiting for room); a zero-sized no-op
/// without the `metrics` feature.
#[derive(Debug, Default)]
pub(crate) struct Stopwatch {
    #[cfg(feature = "metrics")]
    started: Option<Instant>,
}

impl Stopwatch {
    /// Starts timing, unless it already is (the interval began earlier).
    #[inline]
    pub(crate) fn start(&mut self) {
        #[cfg(feature = "metrics")]
        if self.started.is_none() {
            self.started = Some(Instant::now());
        }
    }

    /// Ends the interval: its length, if one was being timed.
    #[cfg(feature = "metrics")]
    #[inline]
    fn stop(&mut self) -> Option<Duration> {
        self.started.take().map(|t| t.elapsed())
    }

    /// Ends the interval: nothing is timed without the feature.
    #[cfg(not(feature = "metrics"))]
    #[inline]
    fn stop(&mut self) -> Option<Duration> {
        None
    }
}

/// A close code's name from spec/close-codes.md: a bounded label, unlike the number a peer
/// may choose freely in 3000–4999.
#[cfg(feature = "metrics")]
fn code_label(code: Option<CloseCode>) -> &'static str {
    match code {
        None | Some(CloseCode::ABNORMAL) => "ABNORMAL",
        Some(code) => code.name().unwrap_or("OTHER"),
    }
}

/// A connection finished its handshake.
pub(crate) fn connection_opened() {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("mux_connections_opened_total").increment(1);
        metrics::gauge!("mux_connections").increment(1.0);
    }
}

/// A connection ended with `code` (`None`: the transport was lost without one).
pub(crate) fn connection_closed(code: Option<CloseCode>) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("mux_connections_closed_total", "code" => code_label(code)).increment(1);
        metrics::gauge!("mux_connections").decrement(1.0);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = code;
}

/// A handshake was refused with an HTTP status (0: it failed or timed out unanswered).
pub(crate) fn handshake_refused(status: u16) {
    #[cfg(feature = "metrics")]
    {
        let status = match status {
            400 => "400",
            401 => "401",
            403 => "403",
            426 => "426",
            429 => "429",
            431 => "431",
            503 => "503",
            0 => "none",
            _ => "other",
        };
        metrics::counter!("mux_handshakes_refused_total", "status" => status).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = status;
}

/// The authenticator decided the handshake `clock` timed.
pub(crate) fn authenticated(clock: &mut Stopwatch, accepted: bool) {
    if let Some(took) = clock.stop() {
        #[cfg(feature = "metrics")]
        {
            let outcome = if accepted { "accepted" } else { "refused" };
            metrics::histogram!("mux_authentication_seconds", "outcome" => outcome)
                .record(took.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (took, accepted);
    }
}

/// The authorizer decided the peer OPEN `clock` timed; `outcome` is `granted`, `refused`
/// or `timeout`.
pub(crate) fn authorized(clock: &mut Stopwatch, outcome: &'static str) {
    if let Some(took) = clock.stop() {
        #[cfg(feature = "metrics")]
        metrics::histogram!("mux_authorization_seconds", "outcome" => outcome)
            .record(took.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = (took, outcome);
    }
}

/// A session was accepted (by the authorizer, or by the peer for ours).
pub(crate) fn session_opened() {
    #[cfg(feature = "metrics")]
    metrics::counter!("mux_sessions_opened_total").increment(1);
}

/// A session ended with `code`.
pub(crate) fn session_closed(code: CloseCode) {
    #[cfg(feature = "metrics")]
    metrics::counter!("mux_sessions_closed_total", "code" => code_label(Some(code))).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = code;
}

/// A protocol limit was hit.
pub(crate) fn limit_hit(limit: LimitKind) {
    #[cfg(feature = "metrics")]
    {
        let limit = match limit {
            LimitKind::SessionRate => "session_rate",
            LimitKind::ConnectionRate => "connection_rate",
            LimitKind::OpenRate => "open_rate",
            LimitKind::Sessions => "sessions",
            LimitKind::RecvBuffer => "recv_buffer",
            LimitKind::MessageSize => "message_size",
            LimitKind::FrameSize => "frame_size",
            LimitKind::Credit => "credit",
            LimitKind::ControlBudget => "control_budget",
            LimitKind::OpenMetadata => "open_metadata",
            _ => "other",
        };
        metrics::counter!("mux_limit_hits_total", "limit" => limit).increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = limit;
}

/// The application took a received message that had waited `waited` since its last frame
/// arrived (the receive queue time). Called only with the feature: without it the driver
/// does not even look up when the message arrived.
#[cfg(feature = "metrics")]
#[inline]
pub(crate) fn received_after(waited: Duration) {
    metrics::histogram!("mux_recv_queue_seconds").record(waited.as_secs_f64());
}

/// A send that had found its session without room (no credit left, or the queues full)
/// was queued: the stall `clock` timed ends. Called only with the feature (the session
/// lookup it needs is not made without it).
#[cfg(feature = "metrics")]
#[inline]
pub(crate) fn send_unblocked(clock: &mut Stopwatch) {
    if let Some(stalled) = clock.stop() {
        metrics::histogram!("mux_credit_stall_seconds").record(stalled.as_secs_f64());
    }
}

/// The driver's writes since `clock` started are flushed to the socket.
#[inline]
pub(crate) fn flushed(clock: &mut Stopwatch) {
    if let Some(took) = clock.stop() {
        #[cfg(feature = "metrics")]
        metrics::histogram!("mux_write_seconds").record(took.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = took;
    }
}

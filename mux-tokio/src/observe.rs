//! Counters through the `metrics` facade (feature `metrics`); without the feature every
//! function here compiles to nothing. Names follow `mux_*_total`; labels are close codes and
//! limit kinds, never principals or tokens (bounded cardinality, no secrets).

use mux_proto::{CloseCode, LimitKind};

/// A connection finished its handshake.
pub(crate) fn connection_opened() {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("mux_connections_opened_total").increment(1);
        metrics::gauge!("mux_connections").increment(1.0);
    }
}

/// A connection ended with `code`.
pub(crate) fn connection_closed(code: Option<CloseCode>) {
    #[cfg(feature = "metrics")]
    {
        let code = code.map_or(0, CloseCode::get).to_string();
        metrics::counter!("mux_connections_closed_total", "code" => code).increment(1);
        metrics::gauge!("mux_connections").decrement(1.0);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = code;
}

/// A handshake was refused with an HTTP status.
pub(crate) fn handshake_refused(status: u16) {
    #[cfg(feature = "metrics")]
    metrics::counter!("mux_handshakes_refused_total", "status" => status.to_string()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = status;
}

/// A session was accepted (by the authorizer, or by the peer for ours).
pub(crate) fn session_opened() {
    #[cfg(feature = "metrics")]
    metrics::counter!("mux_sessions_opened_total").increment(1);
}

/// A session ended with `code`.
pub(crate) fn session_closed(code: CloseCode) {
    #[cfg(feature = "metrics")]
    metrics::counter!("mux_sessions_closed_total", "code" => code.get().to_string()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = code;
}

/// A protocol limit was hit.
pub(crate) fn limit_hit(limit: LimitKind) {
    #[cfg(feature = "metrics")]
    metrics::counter!("mux_limit_hits_total", "limit" => format!("{limit:?}")).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = limit;
}

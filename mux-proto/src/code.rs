//! Close codes: one table for session and connection scope (spec/close-codes.md).

use std::fmt;

/// Where a close code may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only in session CLOSE/RESET frames.
    Session,
    /// Only in GOAWAY and connection CLOSE frames.
    Connection,
    /// In either.
    Both,
}

/// A 16-bit close code, carried by CLOSE, RESET, GOAWAY and CONN_CLOSE frames.
///
/// Values follow RFC 6455 §7.4 where the meaning fits, and use 4000–4999 for this
/// protocol's own reasons, so a browser sees the same code on the WebSocket close.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct CloseCode(pub u16);

macro_rules! close_codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr, $scope:ident, $retry:expr;)*) => {
        impl CloseCode {
            $($(#[$doc])* pub const $name: CloseCode = CloseCode($value);)*

            /// The code's name in `spec/close-codes.md`, or `None` for an unassigned value.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// Where the code may be used; unassigned application codes may be used anywhere.
            pub fn scope(self) -> Scope {
                match self.0 {
                    $($value => Scope::$scope,)*
                    _ => Scope::Both,
                }
            }

            /// Whether retrying the same request later can succeed.
            pub fn is_retryable(self) -> bool {
                match self.0 {
                    $($value => $retry,)*
                    _ => false,
                }
            }
        }
    };
}

close_codes! {
    /// The session or connection finished normally.
    NORMAL = 1000, Both, false;
    /// The endpoint is going away (server shutdown, page navigation); reconnect elsewhere.
    GOING_AWAY = 1001, Connection, true;
    /// The peer broke a rule of the wire format or of the session state machine.
    PROTOCOL_ERROR = 1002, Both, false;
    /// The peer sent a kind of data this endpoint does not accept (a text WebSocket message).
    UNSUPPORTED_DATA = 1003, Connection, false;
    /// A field that must be UTF-8 was not.
    INVALID_DATA = 1007, Both, false;
    /// The peer broke a policy: it sent without permission, or exhausted an abuse budget.
    POLICY_VIOLATION = 1008, Both, false;
    /// A message or frame was larger than the limit in force.
    MESSAGE_TOO_BIG = 1009, Both, false;
    /// The endpoint hit an unexpected internal condition.
    INTERNAL_ERROR = 1011, Both, true;
    /// The endpoint is overloaded; retry after the hinted delay.
    TRY_AGAIN_LATER = 1013, Connection, true;
    /// The OPEN carried no valid credentials; retry with fresh credentials.
    UNAUTHORIZED = 4000, Session, true;
    /// The principal may not use this session kind; retrying will not help.
    FORBIDDEN = 4001, Session, false;
    /// A rate limit was exceeded; retry after the hinted delay.
    RATE_LIMITED = 4002, Both, true;
    /// The concurrent-session limit was reached; retry when a session has closed.
    TOO_MANY_SESSIONS = 4003, Session, true;
    /// The peer sent beyond its credit, or overflowed a credit window.
    FLOW_CONTROL = 4004, Both, false;
    /// A frame named a session ID that was never opened.
    UNKNOWN_SESSION = 4005, Both, false;
    /// A deadline passed: authorization, idle, keepalive or shutdown.
    TIMEOUT = 4006, Both, true;
    /// The session's authorization was revoked by the application.
    REVOKED = 4007, Session, false;
    /// The receiver did not keep up with the messages sent to it.
    SLOW_CONSUMER = 4008, Both, true;
    /// The OPEN was not processed at all (after GOAWAY); safe to retry on a new connection.
    REFUSED = 4009, Session, true;
    /// The application cancelled the session.
    CANCELLED = 4010, Session, false;
}

impl CloseCode {
    /// Local only, never sent: the transport ended without a close frame (RFC 6455's 1006).
    pub const ABNORMAL: CloseCode = CloseCode(1006);

    /// Whether an endpoint may put this value on the wire (spec/close-codes.md#valid-values).
    ///
    /// 1005, 1006 and 1015 are reserved by RFC 6455 for local use; 1004, 1012 and 1014 and
    /// values below 1000 are not assigned for this protocol.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1011 | 1013 | 3000..=4999)
    }

    /// The raw wire value.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "CloseCode({} {name})", self.0),
            None => write!(f, "CloseCode({})", self.0),
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_values_are_not_valid_on_the_wire() {
        for reserved in [
            0,
            999,
            1004,
            1005,
            1006,
            1012,
            1014,
            1015,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(!CloseCode(reserved).is_valid_on_wire(), "{reserved}");
        }
        for ok in [1000, 1002, 1008, 1009, 1013, 3000, 4000, 4010, 4999] {
            assert!(CloseCode(ok).is_valid_on_wire(), "{ok}");
        }
    }

    #[test]
    fn every_named_code_is_valid_on_the_wire() {
        for v in 0..=u16::MAX {
            let code = CloseCode(v);
            if code.name().is_some() {
                assert!(code.is_valid_on_wire(), "{code:?}");
            }
        }
    }

    #[test]
    fn scope_and_retry_follow_the_table() {
        assert_eq!(CloseCode::GOING_AWAY.scope(), Scope::Connection);
        assert_eq!(CloseCode::UNAUTHORIZED.scope(), Scope::Session);
        assert!(CloseCode::RATE_LIMITED.is_retryable());
        assert!(!CloseCode::FORBIDDEN.is_retryable());
    }
}

//! Sans-IO protocol state machine for secure session multiplexing over WebSocket.
//!
//! `mux-proto` is fully deterministic: it contains no networking code, reads no clock,
//! spawns nothing, keeps no global state and uses no `unsafe`. Bytes and time go in as
//! arguments; frames to send, events and the next deadline come out. Any runtime can drive
//! it; `mux-tokio` is the tokio driver.
//!
//! The wire format is specified in `spec/frames.md`; [`frame`] implements it.
//!
//! ```
//! use bytes::Bytes;
//! use mux_proto::frame::{decode_message, encode_message, Data, Frame};
//! use mux_proto::SessionId;
//!
//! let frame = Frame::Data(Data {
//!     session_id: SessionId(1),
//!     end: true,
//!     fin: false,
//!     payload: Bytes::from_static(b"hello"),
//! });
//! let wire = encode_message([&frame]).freeze();
//! assert_eq!(decode_message(wire).unwrap(), vec![frame]);
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod code;
pub mod config;
mod connection;
pub mod error;
pub mod event;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod id;
mod rate;
pub mod session;
pub mod stats;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;

pub use code::{CloseCode, Scope};
pub use config::{Config, Grant, Limits, PeerSettings, RatePolicy, Timeouts};
pub use connection::{Connection, MIN_TRANSMIT};
pub use error::{OpenError, SendError, SessionError};
pub use event::{Event, Initiator, LimitKind};
pub use frame::{Credential, OpenRequest, Permissions, RateLimits, Text};
pub use id::{SessionId, Side};
pub use session::{Phase, Window};
pub use stats::{ConnectionStats, SessionStats};
pub use time::Timestamp;

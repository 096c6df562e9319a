//! Redis for [`mux_tokio`] across nodes.
//!
//! - [`RedisQuotas`]: handshakes, session opens and messages per principal (or address),
//!   charged by one atomic Lua GCRA script; a client that reconnects to another node stays
//!   inside one budget. While Redis is unreachable the server's
//!   [`QuotaPolicy::on_error`](mux_tokio::quota::QuotaPolicy) fails open or closed.
//!
//! Every command has a deadline ([`RedisOptions::command_timeout`]), so Redis restarting or
//! unreachable never blocks a node.
#![forbid(unsafe_code)]

mod error;
mod options;
mod quota;
mod script;
#[cfg(feature = "testing")]
pub mod testing;
mod wire;

pub use error::BrokerError;
pub use options::RedisOptions;
pub use quota::RedisQuotas;

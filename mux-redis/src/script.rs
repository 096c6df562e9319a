//! The Lua scripts, each one atomic step in Redis, and how they are run: EVALSHA, loaded
//! once per connection to Redis, with EVAL when Redis does not have the script (it
//! restarted, or its script cache was flushed), which also caches it again.
//!
//! Time is Redis's own (`TIME`), so nodes with skewed clocks agree on every deadline.

use redis::aio::ConnectionManager;
use redis::{Cmd, ErrorKind, FromRedisValue, ServerErrorKind};

use crate::BrokerError;

/// GCRA (one timestamp per key, as `mux_tokio::quota::MemoryQuotas`): charges `cost` units
/// all or none. The key expires when it holds no information any more.
///
/// KEYS[1] the key's theoretical arrival time (µs). ARGV[1] the interval between units (µs),
/// ARGV[2] the tolerance, interval × (burst − 1) (µs), ARGV[3] the cost. Returns
/// `{1, 0}` when charged, `{0, µs until it would be}` when limited.
pub(crate) const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local increment = interval * tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local ahead = tat + increment - interval - now
if ahead > tolerance then
  return {0, ahead - tolerance}
end
local next = tat + increment
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', math.floor((next - now) / 1000) + 1)
return {1, 0}
";

/// A script with its SHA1, run by EVALSHA.
#[derive(Debug, Clone)]
pub(crate) struct Lua {
    source: &'static str,
    sha: String,
}

impl Lua {
    pub(crate) fn new(source: &'static str) -> Self {
        Lua {
            source,
            sha: redis::Script::new(source).get_hash().to_owned(),
        }
    }

    /// Runs the script with `keys` keys and arguments that `fill` appends after them
    /// (keys first), without a deadline: callers bound it.
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        con: &mut ConnectionManager,
        keys: usize,
        fill: impl Fn(&mut Cmd),
    ) -> Result<T, BrokerError> {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(&self.sha).arg(keys);
        fill(&mut evalsha);
        match evalsha.query_async(con).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let mut eval = redis::cmd("EVAL");
                eval.arg(self.source).arg(keys);
                fill(&mut eval);
                Ok(eval.query_async(con).await?)
            }
            other => Ok(other?),
        }
    }
}

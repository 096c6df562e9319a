//! The Lua scripts, each one atomic step in Redis, and how they are run: EVALSHA, loaded
//! once per connection to Redis, with EVAL when Redis does not have the script (it
//! restarted, or its script cache was flushed), which also caches it again.
//!
//! Time is Redis's own (`TIME`), so nodes with skewed clocks agree on every deadline.

use redis::aio::ConnectionManager;
use redis::{Cmd, ErrorKind, FromRedisValue, ServerErrorKind};

use crate::BrokerError;

/// Numbers a message in its topic and publishes it: one round trip per publish.
///
/// KEYS[1] the topic's sequence (hash: `s` the last number, `e` its epoch, when Redis
/// created it). ARGV[1] the channel, ARGV[2] `origin:counter:flags`,
/// ARGV[3] the payload, ARGV[4] how long the sequence outlives this publish (ms).
/// Returns `{sequence, nodes that received it, epoch}`.
pub(crate) const PUBLISH: &str = r"
local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
local epoch
if seq == 1 then
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'e', epoch)
else
  epoch = redis.call('HGET', KEYS[1], 'e') or '0'
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local body = 'm' .. epoch .. ':' .. string.format('%d', seq) .. ':' .. ARGV[2] .. '\n' .. ARGV[3]
local nodes = redis.call('PUBLISH', ARGV[1], body)
return {seq, nodes, tonumber(epoch)}
";

/// Presence: sweeps expired entries (a `leave` for each member no node holds any more),
/// optionally lists who is present, then adds or refreshes this node's members (a `join`
/// for each member no node held before).
///
/// KEYS[1] the entries (sorted set `node:member`, scored by expiry in ms), KEYS[2] the
/// members (hash member -> entries). ARGV[1] the channel, ARGV[2] the node, ARGV[3] an
/// entry's lifetime (ms), ARGV[4] the keys' lifetime (ms), ARGV[5] how many members to list
/// (-1: no list), ARGV[6..] this node's members. Returns `{members present, {listed}}`, the
/// list taken before this node's members were added.
pub(crate) const TOUCH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now), 'LIMIT', 0, 256)
for _, entry in ipairs(expired) do
  redis.call('ZREM', KEYS[1], entry)
  local sep = string.find(entry, ':', 1, true)
  if sep then
    local member = string.sub(entry, sep + 1)
    if redis.call('HINCRBY', KEYS[2], member, -1) <= 0 then
      redis.call('HDEL', KEYS[2], member)
      redis.call('PUBLISH', ARGV[1], 'l' .. member)
    end
  end
end
local total = 0
local listed = {}
local max = tonumber(ARGV[5])
if max >= 0 then
  total = redis.call('HLEN', KEYS[2])
  if max > 0 and total > 0 then
    local all = redis.call('HKEYS', KEYS[2])
    for i = 1, math.min(max, #all) do
      listed[i] = all[i]
    end
  end
end
local expiry = string.format('%d', now + tonumber(ARGV[3]))
for i = 6, #ARGV do
  local member = ARGV[i]
  if redis.call('ZADD', KEYS[1], expiry, ARGV[2] .. ':' .. member) == 1 then
    if redis.call('HINCRBY', KEYS[2], member, 1) == 1 then
      redis.call('PUBLISH', ARGV[1], 'j' .. member)
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {total, listed}
";

/// Presence: this node's `members` left; a `leave` for each that no node holds any more.
/// A member whose entry is already gone (Redis restarted, or another node swept it) and
/// that nobody holds gets its `leave` again, so a leave lost while Redis was away is sent
/// once it is back.
///
/// KEYS as [`TOUCH`]. ARGV[1] the channel, ARGV[2] the node, ARGV[3..] the members.
pub(crate) const LEAVE: &str = r"
for i = 3, #ARGV do
  local member = ARGV[i]
  if redis.call('ZREM', KEYS[1], ARGV[2] .. ':' .. member) == 1 then
    if redis.call('HINCRBY', KEYS[2], member, -1) <= 0 then
      redis.call('HDEL', KEYS[2], member)
      redis.call('PUBLISH', ARGV[1], 'l' .. member)
    end
  elseif redis.call('HEXISTS', KEYS[2], member) == 0 then
    redis.call('PUBLISH', ARGV[1], 'l' .. member)
  end
end
return 1
";

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

    /// Loads the script into Redis's cache, so later calls are EVALSHA only. Best effort:
    /// [`Lua::run`] falls back to EVAL anyway.
    pub(crate) async fn load(&self, con: &mut ConnectionManager) -> Result<(), BrokerError> {
        let _sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(self.source)
            .query_async(con)
            .await?;
        Ok(())
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

/// The scripts a hub or store uses.
#[derive(Debug, Clone)]
pub(crate) struct Scripts {
    pub(crate) publish: Lua,
    pub(crate) touch: Lua,
    pub(crate) leave: Lua,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            publish: Lua::new(PUBLISH),
            touch: Lua::new(TOUCH),
            leave: Lua::new(LEAVE),
        }
    }

    /// Loads them all (best effort).
    pub(crate) async fn load(&self, con: &mut ConnectionManager) -> Result<(), BrokerError> {
        self.publish.load(con).await?;
        self.touch.load(con).await?;
        self.leave.load(con).await
    }
}

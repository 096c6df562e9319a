//! The Lua scripts, each one atomic step in Redis, and how they are run: EVALSHA, loaded
//! once per connection to Redis, with EVAL when Redis does not have the script (it
//! restarted, or its script cache was flushed), which also caches it again.
//!
//! Time is Redis's own (`TIME`), so nodes with skewed clocks agree on every deadline.

use redis::aio::ConnectionManager;
use redis::{Cmd, ErrorKind, FromRedisValue, ServerErrorKind};

use crate::BrokerError;

/// Numbers a message in its topic, keeps it in the topic's history, and publishes it: one
/// round trip per publish, and one atomic step, so a message is in the history exactly when
/// it was published.
///
/// KEYS[1] the topic's sequence (hash: `s` the last number, `e` its epoch, the time Redis
/// created it in µs), KEYS[2] the topic's history (a stream, entry ids `<seq>-0`, fields `t`
/// Redis's time in ms and `d` the payload). ARGV[1] the channel, ARGV[2]
/// `origin:counter:flags`, ARGV[3] the payload, ARGV[4] how long the sequence outlives this
/// publish (ms), ARGV[5] the history's length (0: none), ARGV[6] its age (ms).
/// Returns `{sequence, nodes that received it, epoch}`.
///
/// A sequence without an epoch (new, expired, or lost with a Redis that restarted without
/// persistence) starts a new epoch, and drops any history left from the old one: offsets are
/// only ever compared within one epoch. The history expires with its age: after that long
/// without a publish it holds nothing worth replaying.
pub(crate) const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
local t = redis.call('TIME')
if not epoch then
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
end
local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local max_len = tonumber(ARGV[5])
if max_len > 0 then
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XADD', KEYS[2], 'MAXLEN', max_len, string.format('%d-0', seq),
    't', string.format('%d', now), 'd', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
local body = 'm' .. epoch .. ':' .. string.format('%d', seq) .. ':' .. ARGV[2] .. '\n' .. ARGV[3]
local nodes = redis.call('PUBLISH', ARGV[1], body)
return {seq, nodes, tonumber(epoch)}
";

/// Reads a topic's stream for a subscriber that attaches: its epoch, its last number, and
/// the messages the history still holds in a range, in one atomic step so the three agree.
/// A topic Redis holds no sequence for gets one now (epoch, last number 0), so every node
/// that attaches before the first publish agrees on the epoch.
///
/// KEYS as [`PUBLISH`]. ARGV[1] the last offset the subscriber has (the range starts after
/// it; -1: no range), ARGV[2] the range's last offset (-1: up to the end), ARGV[3] the
/// history's length (at most this many are returned), ARGV[4] its age (ms: older entries are
/// not returned), ARGV[5] the sequence's lifetime (ms, for a new one), ARGV[6] the epoch of
/// ARGV[1] (empty: Redis's): for another epoch the range starts at the history's start.
/// Returns `{epoch, last, {offset, payload, offset, payload, ...}}`.
pub(crate) const READ: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
local t = redis.call('TIME')
if not epoch then
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('DEL', KEYS[2])
end
local last = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
local after = tonumber(ARGV[1])
if after >= 0 and ARGV[6] ~= '' and ARGV[6] ~= epoch then
  after = 0
end
local upto = tonumber(ARGV[2])
if upto < 0 or upto > last then
  upto = last
end
local max_len = tonumber(ARGV[3])
local found = {}
if after >= 0 and after < upto and max_len > 0 then
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local oldest = now - tonumber(ARGV[4])
  local entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', after + 1),
    string.format('%d-0', upto), 'COUNT', max_len)
  for _, entry in ipairs(entries) do
    local id = entry[1]
    local fields = entry[2]
    local at, data
    for i = 1, #fields, 2 do
      if fields[i] == 't' then at = tonumber(fields[i + 1]) end
      if fields[i] == 'd' then data = fields[i + 1] end
    end
    if at and data and at > oldest then
      found[#found + 1] = string.sub(id, 1, string.find(id, '-', 1, true) - 1)
      found[#found + 1] = data
    end
  end
end
return {tonumber(epoch), last, found}
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
    pub(crate) read: Lua,
    pub(crate) touch: Lua,
    pub(crate) leave: Lua,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            publish: Lua::new(PUBLISH),
            read: Lua::new(READ),
            touch: Lua::new(TOUCH),
            leave: Lua::new(LEAVE),
        }
    }

    /// Loads them all (best effort).
    pub(crate) async fn load(&self, con: &mut ConnectionManager) -> Result<(), BrokerError> {
        self.publish.load(con).await?;
        self.read.load(con).await?;
        self.touch.load(con).await?;
        self.leave.load(con).await
    }
}

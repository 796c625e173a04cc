#!lua flags=allow-oom
-- allow-oom: runs even when Redis is over maxmemory, so running jobs keep their leases and
-- their outcomes are recorded while new work waits (SPEC section 9, "Redis full"); what it
-- writes is bounded by the jobs already claimed.
-- Extends the leases of the jobs a live worker still holds (its heartbeat), or, with
-- mode 'release', hands them back to the front of their kind's queue uncounted (graceful
-- shutdown). Fenced by each attempt's token. Returns the ids it renewed or released: a
-- claim missing from the answer is no longer this worker's (its lease expired and another
-- worker may hold it), so the worker stops its handler.
-- KEYS[1]: a key of the namespace, for routing.
-- ARGV: NS, mode (renew|release), lease_ms, wake_cap, then id, token pairs
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ns, mode, lease, cap = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local done = {}
for i = 5, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = ns .. 'job:' .. id
  if redis.call('HGET', key, 'token') == token then
    table.insert(done, id)
    if mode == 'renew' then
      redis.call('ZADD', ns .. 'running', 'XX', now + lease, id)
    else
      local kind = redis.call('HGET', key, 'kind')
      redis.call('ZREM', ns .. 'running', id)
      if redis.call('HINCRBY', ns .. 'active', kind, -1) <= 0 then
        redis.call('HDEL', ns .. 'active', kind)
      end
      redis.call('HINCRBY', key, 'attempts', -1)
      redis.call('HSET', key, 'state', 'pending', 'token', '', 'due_ms', now)
      redis.call('LPUSH', ns .. 'pending:' .. kind, id)
      redis.call('RPUSH', ns .. 'wake:' .. kind, '1')
      redis.call('LTRIM', ns .. 'wake:' .. kind, -cap, -1)
    end
  end
end
return done

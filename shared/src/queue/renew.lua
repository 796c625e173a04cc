-- Extends the leases of the jobs a live worker still holds (its heartbeat), or, with
-- mode 'release', hands them back to the front of the queue uncounted (graceful shutdown of
-- jobs that never started). Fenced by each attempt's token.
-- KEYS: running, pending
-- ARGV: job key prefix, mode (renew|release), lease_ms, then id, token pairs
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, mode, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local count = 0
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local key = prefix .. id
  if redis.call('HGET', key, 'token') == token then
    count = count + 1
    if mode == 'renew' then
      redis.call('ZADD', KEYS[1], 'XX', now + lease, id)
    else
      redis.call('ZREM', KEYS[1], id)
      redis.call('HINCRBY', key, 'attempts', -1)
      redis.call('HSET', key, 'state', 'pending', 'token', '')
      redis.call('LPUSH', KEYS[2], id)
    end
  end
end
return count

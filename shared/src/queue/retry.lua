#!lua
-- Declared (a shebang with no flags) so that Redis refuses the whole script when it is over
-- maxmemory, before it runs, instead of failing at its first write and leaving the writes
-- before it applied (SPEC section 9, "Redis full").
-- Sends a dead job back to its kind's queue with a fresh set of attempts (an operator's
-- decision, after fixing what killed it). Its history is kept. Returns 0 unless it was dead.
-- KEYS[1]: a key of the namespace, for routing.
-- ARGV: NS, id, wake_cap
local ns, id, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = ns .. 'job:' .. id
if redis.call('HGET', key, 'state') ~= 'dead' then
  return 0
end
local job = redis.call('HMGET', key, 'kind', 'owner')
redis.call('ZREM', ns .. 'dead', id)
redis.call('PERSIST', key)
redis.call('HSET', key, 'state', 'pending', 'attempts', 0, 'token', '')
local t = redis.call('TIME')
redis.call('HSET', key, 'due_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('HDEL', key, 'finished_ms')
make_ready(ns, job[1], id, job[2], cap)
return 1

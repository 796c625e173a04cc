#!lua flags=allow-oom
-- allow-oom: cancelling only removes work, so it must succeed when Redis is full.
-- Cancels a job that has not finished (SPEC section 10): a pending one leaves its kind's
-- list, a scheduled one the schedule, a running one loses its claim (its token is cleared,
-- so its worker's next lease renewal is refused and stops the handler, and a late outcome
-- is refused). The job is kept as `cancelled`, inspectable, for the dead retention.
-- Returns the state the job was in ('' when there is no such job); only 'pending',
-- 'scheduled' and 'running' were changed.
-- KEYS[1]: a key of the namespace, for routing.
-- ARGV: NS, id, retention_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ns, id = ARGV[1], ARGV[2]
local key = ns .. 'job:' .. id
local job = redis.call('HMGET', key, 'state', 'kind', 'owner')
local state, kind = job[1], job[2]
if not state then
  return ''
elseif state == 'pending' then
  unready(ns, kind, id, job[3])
elseif state == 'scheduled' then
  redis.call('ZREM', ns .. 'scheduled', id)
elseif state == 'running' then
  redis.call('ZREM', ns .. 'running', id)
  if redis.call('HINCRBY', ns .. 'active', kind, -1) <= 0 then
    redis.call('HDEL', ns .. 'active', kind)
  end
else
  return state
end
redis.call('HSET', key, 'state', 'cancelled', 'token', '', 'finished_ms', now,
  'last_error', 'cancelled by an operator')
redis.call('ZADD', ns .. 'cancelled', now, id)
redis.call('PEXPIRE', key, tonumber(ARGV[3]))
return state

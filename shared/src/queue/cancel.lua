#!lua flags=allow-oom
-- allow-oom: cancelling only removes work, so it must succeed when Redis is full.
-- Cancels a job that has not finished (SPEC section 10): a pending one leaves its kind's
-- list, a scheduled one the schedule, a running one loses its claim (its token is cleared,
-- so its worker's next lease renewal is refused and stops the handler, and a late outcome
-- is refused). The job is kept as `cancelled`, inspectable, for the dead retention.
-- Returns the state the job was in ('' when there is no such job); only 'pending',
-- 'scheduled' and 'running' were changed.
-- KEYS: the shard's layout (`ready.lua`) with every kind it knows of.
-- ARGV: id
local K = layout()
local now = now_ms()
local id = ARGV[1]
local job = job_get(K, id, 'state', 'kind', 'owner')
local state, kind = job[1], job[2]
if not state then
  return ''
elseif state == 'pending' then
  unready(K, kind, id, job[3])
elseif state == 'scheduled' then
  redis.call('ZREM', K.scheduled, id)
elseif state == 'running' then
  redis.call('ZREM', K.running, id)
  if redis.call('HINCRBY', K.active, kind, -1) <= 0 then
    redis.call('HDEL', K.active, kind)
  end
else
  return state
end
job_set(K, id, 'state', 'cancelled', 'token', '', 'finished_ms', now,
  'last_error', 'cancelled by an operator')
redis.call('ZADD', K.cancelled, now, id)
return state

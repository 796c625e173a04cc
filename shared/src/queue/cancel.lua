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
local run = get_run(K, id)
if not run then
  return ''
end
local state, kind = run.state, run.kind
if state == 'pending' then
  unready(K, kind, id, get_job(K, id).owner)
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
run.state, run.finished_ms = 'cancelled', now
put_run(K, id, run)
job_set(K, id, 'last_error', 'cancelled by an operator')
redis.call('ZADD', K.cancelled, now, id)
return state

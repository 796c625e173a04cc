-- Records the outcome of one attempt, fenced by the attempt's token: a worker whose lease
-- expired (and whose job was handed to another worker) cannot overwrite the new run's result.
-- KEYS[1]: a key of the namespace, for routing.
-- ARGV: NS, id, token, outcome (ok|retry|dead), duration_ms, error, retry_delay_ms,
--       done_retention_ms, dead_retention_ms
local ns, id, token, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = ns .. 'job:' .. id
if redis.call('HGET', key, 'token') ~= token then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local job = redis.call('HMGET', key, 'attempts', 'worker', 'started_ms')
local history = cjson.decode(redis.call('HGET', key, 'history') or '[]')
local entry = {attempt = tonumber(job[1]), worker = job[2], started_ms = tonumber(job[3]),
  duration_ms = tonumber(ARGV[5])}
if outcome ~= 'ok' then entry.error = ARGV[6] end
if outcome == 'retry' then entry.retry_in_ms = tonumber(ARGV[7]) end
table.insert(history, entry)
redis.call('HSET', key, 'history', cjson.encode(history), 'token', '')
redis.call('ZREM', ns .. 'running', id)
if outcome ~= 'ok' then
  -- Failed attempts per minute, for the admin overview's "failed in the last hour".
  local bucket = ns .. 'failed:' .. math.floor(now / 60000)
  redis.call('INCR', bucket)
  redis.call('PEXPIRE', bucket, 3900000)
end
if outcome == 'ok' then
  redis.call('HSET', key, 'state', 'done', 'finished_ms', now)
  redis.call('ZADD', ns .. 'done', now, id)
  redis.call('PEXPIRE', key, tonumber(ARGV[8]))
elseif outcome == 'retry' then
  redis.call('HSET', key, 'state', 'scheduled', 'last_error', ARGV[6])
  redis.call('ZADD', ns .. 'scheduled', now + tonumber(ARGV[7]), id)
else
  redis.call('HSET', key, 'state', 'dead', 'last_error', ARGV[6], 'finished_ms', now)
  redis.call('ZADD', ns .. 'dead', now, id)
  redis.call('PEXPIRE', key, tonumber(ARGV[9]))
end
return 1

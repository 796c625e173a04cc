-- Records the outcome of one attempt, fenced by the attempt's token: a worker whose lease
-- expired (and whose job was handed to another worker) cannot overwrite the new run's result.
-- KEYS: running, done, scheduled, dead
-- ARGV: job key, id, token, outcome (ok|retry|dead), duration_ms, error, retry_delay_ms,
--       done_retention_ms, dead_retention_ms
local key, id, token, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
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
table.insert(history, entry)
redis.call('HSET', key, 'history', cjson.encode(history), 'token', '')
redis.call('ZREM', KEYS[1], id)
if outcome == 'ok' then
  redis.call('HSET', key, 'state', 'done', 'finished_ms', now)
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('PEXPIRE', key, tonumber(ARGV[8]))
elseif outcome == 'retry' then
  redis.call('HSET', key, 'state', 'scheduled', 'last_error', ARGV[6])
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), id)
else
  redis.call('HSET', key, 'state', 'dead', 'last_error', ARGV[6], 'finished_ms', now)
  redis.call('ZADD', KEYS[4], now, id)
  redis.call('PEXPIRE', key, tonumber(ARGV[9]))
end
return 1

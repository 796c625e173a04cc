-- Claims up to N jobs for a worker. Before claiming it does the queue's housekeeping, with
-- Redis' clock as the only clock: due retries move to pending, expired leases (a worker that
-- died or hung) are recovered, and finished jobs past retention leave the indexes.
-- The attempt is counted here, at claim time, so a job that kills its worker still uses up
-- an attempt and cannot loop forever.
-- KEYS: pending, running, scheduled, done, dead
-- ARGV: job key prefix, worker, lease_ms, n, done_retention_ms, dead_retention_ms, sweep_limit
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, worker, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n, sweep = tonumber(ARGV[4]), tonumber(ARGV[7])

local function push_history(key, entry)
  local history = cjson.decode(redis.call('HGET', key, 'history') or '[]')
  table.insert(history, entry)
  redis.call('HSET', key, 'history', cjson.encode(history))
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, sweep)) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('HSET', prefix .. id, 'state', 'pending')
  redis.call('RPUSH', KEYS[1], id)
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, sweep)) do
  redis.call('ZREM', KEYS[2], id)
  local key = prefix .. id
  local job = redis.call('HMGET', key, 'attempts', 'max_attempts', 'worker', 'started_ms')
  local error = 'lease expired: worker ' .. tostring(job[3]) .. ' stopped renewing it'
  push_history(key, {attempt = tonumber(job[1]), worker = job[3], error = error,
    started_ms = tonumber(job[4]), duration_ms = now - (tonumber(job[4]) or now)})
  redis.call('HSET', key, 'last_error', error, 'token', '')
  if tonumber(job[1]) >= tonumber(job[2]) then
    redis.call('HSET', key, 'state', 'dead', 'finished_ms', now)
    redis.call('ZADD', KEYS[5], now, id)
    redis.call('PEXPIRE', key, tonumber(ARGV[6]))
  else
    redis.call('HSET', key, 'state', 'pending')
    redis.call('LPUSH', KEYS[1], id)
  end
end

redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[5]))
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[6]))

local claimed = {}
while #claimed < n do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  local key = prefix .. id
  -- A job whose hash expired or was removed is skipped rather than run without a payload.
  if redis.call('EXISTS', key) == 1 then
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    local token = worker .. '#' .. attempts
    redis.call('HSET', key, 'state', 'running', 'worker', worker, 'token', token, 'started_ms', now)
    redis.call('ZADD', KEYS[2], now + lease, id)
    local job = redis.call('HMGET', key, 'kind', 'payload', 'max_attempts', 'request_id')
    table.insert(claimed, {id, job[1], job[2], attempts, tonumber(job[3]), job[4], token})
  end
end
return claimed

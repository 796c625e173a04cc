#!lua
-- Declared (a shebang with no flags) so that Redis refuses the whole script when it is over
-- maxmemory, before it runs, instead of failing at its first write and leaving the writes
-- before it applied (SPEC section 9, "Redis full").
-- Claims up to N jobs of one kind for a worker. Before claiming it does the queue's
-- housekeeping, with Redis' clock as the only clock: due retries return to their kind's
-- pending list, expired leases (a worker that died or hung) are recovered, and finished jobs
-- past retention leave the indexes.
-- The attempt is counted here, at claim time, so a job that kills its worker still uses up
-- an attempt and cannot loop forever.
-- KEYS[1]: a key of the namespace, for routing.
-- ARGV: NS, kind, worker, lease_ms, n, done_retention_ms, dead_retention_ms, sweep_limit,
--       wake_cap
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ns, kind, worker = ARGV[1], ARGV[2], ARGV[3]
local lease, n, sweep, cap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[8]), tonumber(ARGV[9])
local running, scheduled, done, dead = ns .. 'running', ns .. 'scheduled', ns .. 'done', ns .. 'dead'

local function push_history(key, entry)
  local history = cjson.decode(redis.call('HGET', key, 'history') or '[]')
  table.insert(history, entry)
  redis.call('HSET', key, 'history', cjson.encode(history))
end

-- Back to the pending list of the job's own kind, waking one of its workers.
local function make_pending(id, key, front)
  local job_kind = redis.call('HGET', key, 'kind')
  redis.call('HSET', key, 'state', 'pending')
  if front then
    redis.call('LPUSH', ns .. 'pending:' .. job_kind, id)
  else
    redis.call('RPUSH', ns .. 'pending:' .. job_kind, id)
  end
  redis.call('RPUSH', ns .. 'wake:' .. job_kind, '1')
  redis.call('LTRIM', ns .. 'wake:' .. job_kind, -cap, -1)
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', scheduled, '-inf', now, 'LIMIT', 0, sweep)) do
  redis.call('ZREM', scheduled, id)
  make_pending(id, ns .. 'job:' .. id, false)
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, sweep)) do
  redis.call('ZREM', running, id)
  local key = ns .. 'job:' .. id
  local job = redis.call('HMGET', key, 'attempts', 'max_attempts', 'worker', 'started_ms')
  local error = 'lease expired: worker ' .. tostring(job[3]) .. ' stopped renewing it'
  push_history(key, {attempt = tonumber(job[1]), worker = job[3], error = error,
    started_ms = tonumber(job[4]), duration_ms = now - (tonumber(job[4]) or now)})
  redis.call('HSET', key, 'last_error', error, 'token', '', 'due_ms', now)
  local bucket = ns .. 'failed:' .. math.floor(now / 60000)
  redis.call('INCR', bucket)
  redis.call('PEXPIRE', bucket, 3900000)
  if tonumber(job[1]) >= tonumber(job[2]) then
    redis.call('HSET', key, 'state', 'dead', 'finished_ms', now)
    redis.call('ZADD', dead, now, id)
    redis.call('PEXPIRE', key, tonumber(ARGV[7]))
  else
    make_pending(id, key, true)
  end
end

redis.call('ZREMRANGEBYSCORE', done, '-inf', now - tonumber(ARGV[6]))
redis.call('ZREMRANGEBYSCORE', dead, '-inf', now - tonumber(ARGV[7]))

local claimed = {}
local pending = ns .. 'pending:' .. kind
local ids = redis.call('LPOP', pending, n)
if ids then
  for _, id in ipairs(ids) do
    local key = ns .. 'job:' .. id
    local job = redis.call('HMGET', key, 'payload', 'max_attempts', 'request_id', 'attempts', 'claims',
      'traceparent', 'created_ms', 'due_ms')
    -- A job whose hash expired or was removed is skipped rather than run without a payload.
    if job[1] then
      local attempts = tonumber(job[4]) + 1
      -- Claims only ever grow (attempts go back down when a job is handed back), so a token
      -- is never reused even when the same worker claims the same job again.
      local claims = (tonumber(job[5]) or 0) + 1
      local token = worker .. '#' .. claims
      redis.call('HSET', key, 'attempts', attempts, 'claims', claims, 'state', 'running',
        'worker', worker, 'token', token, 'started_ms', now)
      redis.call('ZADD', running, now + lease, id)
      table.insert(claimed, {id, kind, job[1], attempts, tonumber(job[2]), job[3], token,
        -- Claimable since: its retry fell due or it was handed back (due_ms), else pushed.
        job[6] or '', tonumber(job[8]) or tonumber(job[7]) or 0, now})
    end
  end
end
return claimed

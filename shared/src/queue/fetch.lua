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
-- The operators' controls (SPEC section 10, in the namespace's `controls` hash) decide how
-- many it may claim: none while the queue or the kind is paused; no more than the kind's
-- fleet-wide concurrency (its jobs running, counted in `active`) and rate (a token bucket in
-- `bucket:<kind>`) allow. Every worker claims through here, so the limits hold for the fleet.
-- Returns the claimed jobs and, when the controls held some back, how many milliseconds to
-- wait before asking again (0 when nothing was held back).
-- KEYS[1]: a key of the namespace, for routing.
-- Fairness (SPEC section 10): a kind fair by owner is claimed in owners' turns (ready.lua).
-- Priorities (SPEC section 10): a kind claims nothing while a kind of the same queue with a
-- higher priority (ARGV[11...], not paused) has jobs waiting, so urgent work goes first.
-- On a sharded queue the limits are the first shard's to keep, fleet-wide (`admit.lua`):
-- ARGV[10] is then '1', and `n` is what it admitted; or it is 'u' when the last admission
-- found the kind without limits, so the claim skipped it. A limit in this shard's copy of
-- the controls then claims nothing, and the reply says so: the next claim is admitted.
-- ARGV: NS, kind, worker, lease_ms, n, done_retention_ms, dead_retention_ms, sweep_limit,
--       wake_cap, the kind's limits ('0': kept here, '1': admitted elsewhere, 'u': none as
--       last heard), then the kinds ahead of this one
-- Returns {claimed jobs, wait_ms, 1 when a limit turned up for a 'u' claim else 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ns, kind, worker = ARGV[1], ARGV[2], ARGV[3]
local lease, n, sweep, cap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[8]), tonumber(ARGV[9])
local running, scheduled, done, dead = ns .. 'running', ns .. 'scheduled', ns .. 'done', ns .. 'dead'
-- While paused (or without controls), a worker looks again this often, so a resume reaches
-- the fleet within it.
local PAUSED_WAIT_MS = 250

local function push_history(key, entry)
  local history = cjson.decode(redis.call('HGET', key, 'history') or '[]')
  table.insert(history, entry)
  redis.call('HSET', key, 'history', cjson.encode(history))
end

-- Ready again, waking one of its kind's workers: a due job waits its turn (ready.lua); one
-- whose lease expired mid-run goes to the front of its kind's list.
local function make_pending(id, key, front)
  local job = redis.call('HMGET', key, 'kind', 'owner')
  redis.call('HSET', key, 'state', 'pending')
  if front then
    redis.call('LPUSH', ns .. 'pending:' .. job[1], id)
    redis.call('RPUSH', ns .. 'wake:' .. job[1], '1')
    redis.call('LTRIM', ns .. 'wake:' .. job[1], -cap, -1)
  else
    make_ready(ns, job[1], id, job[2], cap)
  end
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', scheduled, '-inf', now, 'LIMIT', 0, sweep)) do
  redis.call('ZREM', scheduled, id)
  make_pending(id, ns .. 'job:' .. id, false)
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, sweep)) do
  redis.call('ZREM', running, id)
  local key = ns .. 'job:' .. id
  local job = redis.call('HMGET', key, 'attempts', 'max_attempts', 'worker', 'started_ms', 'kind')
  if job[5] and redis.call('HINCRBY', ns .. 'active', job[5], -1) <= 0 then
    redis.call('HDEL', ns .. 'active', job[5])
  end
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
redis.call('ZREMRANGEBYSCORE', ns .. 'cancelled', '-inf', now - tonumber(ARGV[7]))

local wait = 0
local controls = redis.call('HMGET', ns .. 'controls', 'paused', 'paused:' .. kind,
  'concurrency:' .. kind, 'rate:' .. kind, 'version')
-- No copy of the controls at all: Redis lost them (restarted without its data, failed over,
-- flushed), and a pause may be among them. Claim nothing until a copy is back (within a
-- second: every worker and API instance copies them each second).
if controls[1] == '1' or controls[2] == '1' or not controls[5] then
  return {{}, PAUSED_WAIT_MS, 0}
end
for i = 11, #ARGV do
  local ahead = ARGV[i]
  if has_ready(ns, ahead)
      and redis.call('HGET', ns .. 'controls', 'paused:' .. ahead) ~= '1' then
    return {{}, 50, 0}
  end
end
if ARGV[10] == 'u' and (controls[3] or controls[4]) then
  return {{}, 0, 1}
end
local admitted = ARGV[10] ~= '0'
if controls[3] and not admitted then
  local active = tonumber(redis.call('HGET', ns .. 'active', kind) or '0')
  local free = tonumber(controls[3]) - active
  if free < n then
    n = math.max(free, 0)
    -- A slot frees when a running job ends; its worker's next fetch is not told, so look
    -- again soon.
    wait = 50
  end
end
local limiter, rate, tokens = ns .. 'bucket:' .. kind, tonumber(controls[4]), nil
if rate and n > 0 and not admitted then
  tokens, n, wait = take_tokens(limiter, rate, n, now, wait)
end
if n <= 0 then
  if tokens then redis.call('HSET', limiter, 'tokens', tokens, 'at', now) end
  return {{}, wait, 0}
end

local claimed = {}
local pending = ns .. 'pending:' .. kind
-- A kind fair by owner: its owners' turns fill the list up to what is claimed now.
local short = n - redis.call('LLEN', pending)
if short > 0 then
  take_turns(ns, kind, short)
end
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
if #claimed > 0 then
  redis.call('HINCRBY', ns .. 'active', kind, #claimed)
end
if tokens then
  redis.call('HSET', limiter, 'tokens', tokens - #claimed, 'at', now)
  redis.call('PEXPIRE', limiter, 60000)
end
return {claimed, wait, 0}

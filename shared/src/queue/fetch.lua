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
-- KEYS: the shard's layout (`ready.lua`) with every kind of the queue it knows of, then the
-- kind's rate limiter `bucket:<kind>`.
-- Fairness (SPEC section 10): a kind fair by owner is claimed in owners' turns (ready.lua).
-- Priorities (SPEC section 10): a kind claims nothing while a kind of the same queue with a
-- higher priority (ARGV[10...], not paused) has jobs waiting, so urgent work goes first.
-- On a sharded queue the limits are the first shard's to keep, fleet-wide (`admit.lua`):
-- ARGV[9] is then '1', and `n` is what it admitted; or it is 'u' when the last admission
-- found the kind without limits, so the claim skipped it. A limit in this shard's copy of
-- the controls then claims nothing, and the reply says so: the next claim is admitted.
-- ARGV: kind, worker, lease_ms, n, done_retention_ms, dead_retention_ms, sweep_limit,
--       wake_cap, the kind's limits ('0': kept here, '1': admitted elsewhere, 'u': none as
--       last heard), then the kinds ahead of this one
-- Returns {claimed jobs, wait_ms, 1 when a limit turned up for a 'u' claim else 0, 1 when a
-- due or expired job's kind was not among the keys (the caller learns the shard's kinds
-- and passes them next time; the job waits where it is until then) else 0}.
local K = layout()
local now = now_ms()
local kind, worker = ARGV[1], ARGV[2]
local lease, n, sweep, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[7]), tonumber(ARGV[8])
-- While paused (or without controls), a worker looks again this often, so a resume reaches
-- the fleet within it.
local PAUSED_WAIT_MS = 250
local unknown = 0

for _, id in ipairs(redis.call('ZRANGEBYSCORE', K.scheduled, '-inf', now, 'LIMIT', 0, sweep)) do
  local run = get_run(K, id)
  if not run then
    -- Its record is gone (discarded): nothing to run.
    redis.call('ZREM', K.scheduled, id)
  elseif not K.of[run.kind] then
    unknown = 1
  else
    redis.call('ZREM', K.scheduled, id)
    run.state = 'pending'
    put_run(K, id, run)
    -- A due job waits its turn.
    make_ready(K, run.kind, id, get_job(K, id).owner, cap)
  end
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', K.running, '-inf', now, 'LIMIT', 0, sweep)) do
  local run = get_run(K, id)
  local k = run and K.of[run.kind]
  if not run then
    redis.call('ZREM', K.running, id)
  elseif not k then
    unknown = 1
  else
    redis.call('ZREM', K.running, id)
    if redis.call('HINCRBY', K.active, run.kind, -1) <= 0 then
      redis.call('HDEL', K.active, run.kind)
    end
    local error = 'lease expired: worker ' .. run.worker .. ' stopped renewing it'
    push_history(K, id, {attempt = run.attempts, worker = run.worker, error = error,
      started_ms = run.started_ms, duration_ms = now - run.started_ms})
    job_set(K, id, 'last_error', error)
    count_failure(K, now)
    run.due_ms = now
    if run.attempts >= tonumber(get_job(K, id).max_attempts) then
      run.state, run.finished_ms = 'dead', now
      redis.call('ZADD', K.dead, now, id)
    else
      -- Back to the front of its kind's list: it was claimed once already.
      run.state = 'pending'
      redis.call('LPUSH', k.pending, id)
      wake(k, cap)
    end
    put_run(K, id, run)
  end
end

expire(K, K.done, now - tonumber(ARGV[5]), sweep)
expire(K, K.dead, now - tonumber(ARGV[6]), sweep)
expire(K, K.cancelled, now - tonumber(ARGV[6]), sweep)

local wait = 0
local controls = redis.call('HMGET', K.controls, 'paused', 'paused:' .. kind,
  'concurrency:' .. kind, 'rate:' .. kind, 'version')
-- No copy of the controls at all: Redis lost them (restarted without its data, failed over,
-- flushed), and a pause may be among them. Claim nothing until a copy is back (within a
-- second: every worker and API instance copies them each second).
if controls[1] == '1' or controls[2] == '1' or not controls[5] then
  return {{}, PAUSED_WAIT_MS, 0, unknown}
end
for i = 10, #ARGV do
  local ahead = ARGV[i]
  if has_ready(K, ahead) and redis.call('HGET', K.controls, 'paused:' .. ahead) ~= '1' then
    return {{}, 50, 0, unknown}
  end
end
if ARGV[9] == 'u' and (controls[3] or controls[4]) then
  return {{}, 0, 1, unknown}
end
local admitted = ARGV[9] ~= '0'
if controls[3] and not admitted then
  local active = tonumber(redis.call('HGET', K.active, kind) or '0')
  local free = tonumber(controls[3]) - active
  if free < n then
    n = math.max(free, 0)
    -- A slot frees when a running job ends; its worker's next fetch is not told, so look
    -- again soon.
    wait = 50
  end
end
local limiter, rate, tokens = KEYS[K.extra], tonumber(controls[4]), nil
if rate and n > 0 and not admitted then
  tokens, n, wait = take_tokens(limiter, rate, n, now, wait)
end
if n <= 0 then
  if tokens then redis.call('HSET', limiter, 'tokens', tokens, 'at', now) end
  return {{}, wait, 0, unknown}
end

local claimed = {}
local pending = K.of[kind].pending
-- A kind fair by owner: its owners' turns fill the list up to what is claimed now.
local short = n - redis.call('LLEN', pending)
if short > 0 then
  take_turns(K, kind, short)
end
local ids = redis.call('LPOP', pending, n)
if ids then
  for _, id in ipairs(ids) do
    local job, run = get_job(K, id), get_run(K, id)
    -- A job whose record was removed is skipped rather than run without a payload.
    if job and run then
      run.attempts, run.claims = run.attempts + 1, run.claims + 1
      run.state, run.worker, run.started_ms = 'running', worker, now
      put_run(K, id, run)
      redis.call('ZADD', K.running, now + lease, id)
      -- Claimable since: its retry fell due or it was handed back (due_ms), else pushed.
      local ready = run.due_ms
      if ready == 0 then ready = tonumber(job.created_ms) end
      table.insert(claimed, {id, kind, job.payload, run.attempts, tonumber(job.max_attempts),
        job.request_id, token_of(run), job.traceparent, ready, now})
    end
  end
end
if #claimed > 0 then
  redis.call('HINCRBY', K.active, kind, #claimed)
end
if tokens then
  redis.call('HSET', limiter, 'tokens', tokens - #claimed, 'at', now)
  redis.call('PEXPIRE', limiter, 60000)
end
return {claimed, wait, 0, unknown}

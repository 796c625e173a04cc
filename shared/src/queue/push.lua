#!lua
-- Declared (a shebang with no flags) so that Redis refuses the whole script when it is over
-- maxmemory, before it runs, instead of failing at its first write and leaving the writes
-- before it applied (SPEC section 9, "Redis full").
-- Adds a batch of jobs. A job is skipped when its id already exists (a row the relay pushed
-- twice is still one job) or when it carries a unique key that is already claimed (a cron
-- tick that another replica enqueued first). The claim and the push are one atomic step.
-- KEYS: the shard's layout (`ready.lua`) with the kinds of the batch, then the unique key of
-- each job that has one, in the batch's order.
-- A delayed job (due later than now, by Redis' clock) waits in `scheduled` until it is due,
-- like a retry; fetch.lua moves it to its kind's list then.
-- A job with an owner (a kind fair by owner) waits its owner's turn (see ready.lua).
-- Each kind pushed is remembered in `kinds`, so fetching can pass the keys of every kind a
-- due job may belong to.
-- ARGV: wake_cap, then per job: id, kind, payload, max_attempts, request_id,
--       unique ('1' when it has a unique key, else ''), unique_ttl_ms, traceparent ('' for
--       none), due_ms (0: now), owner ('' for none)
local K = layout()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Where the job's claims start counting (see `token_of`).
local epoch = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cap = tonumber(ARGV[1])
local added, next_unique = 0, K.extra
for i = 2, #ARGV, 10 do
  local id, kind, unique, owner = ARGV[i], ARGV[i + 1], ARGV[i + 5], ARGV[i + 9]
  local fresh = redis.call('HEXISTS', K.jobs, id .. '|job') == 0
  if unique ~= '' then
    local key = KEYS[next_unique]
    next_unique = next_unique + 1
    if fresh then
      fresh = redis.call('SET', key, id, 'NX', 'PX', tonumber(ARGV[i + 6])) ~= false
    end
  end
  if fresh then
    local due = tonumber(ARGV[i + 8])
    local state = due > now and 'scheduled' or 'pending'
    put_job(K, id, {kind = kind, max_attempts = ARGV[i + 3], created_ms = now,
      request_id = ARGV[i + 4], traceparent = ARGV[i + 7], owner = owner, payload = ARGV[i + 2]})
    redis.call('SADD', K.kinds, kind)
    if state == 'scheduled' then
      -- Its queue wait starts when it falls due.
      put_run(K, id, {state = state, kind = kind, due_ms = due, claims = epoch})
      redis.call('ZADD', K.scheduled, due, id)
    else
      put_run(K, id, {state = state, kind = kind, claims = epoch})
      -- Its wake token wakes one idle worker of the kind blocked on its wake list; the cap
      -- keeps the list bounded when no worker is listening.
      make_ready(K, kind, id, owner, cap)
    end
    added = added + 1
  end
end
return added

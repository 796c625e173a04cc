#!lua
-- Declared (a shebang with no flags) so that Redis refuses the whole script when it is over
-- maxmemory, before it runs, instead of failing at its first write and leaving the writes
-- before it applied (SPEC section 9, "Redis full").
-- Adds a batch of jobs. A job is skipped when its id already exists (a row the relay pushed
-- twice is still one job) or when it carries a unique key that is already claimed (a cron
-- tick that another replica enqueued first). The claim and the push are one atomic step.
-- Keys live under the queue's namespace NS (one hash tag, so one cluster slot); KEYS[1] is a
-- key of that namespace, for routing.
-- A delayed job (due later than now, by Redis' clock) waits in `scheduled` until it is due,
-- like a retry; fetch.lua moves it to its kind's list then.
-- A job with an owner (a kind fair by owner) waits in its owner's list (see ready.lua).
-- ARGV: NS, wake_cap, then per job: id, kind, payload, max_attempts, request_id,
--       unique_key ('' for none), unique_ttl_ms, traceparent ('' for none), due_ms (0: now),
--       owner ('' for none)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ns, cap = ARGV[1], tonumber(ARGV[2])
local added = 0
for i = 3, #ARGV, 10 do
  local id, kind, unique, owner = ARGV[i], ARGV[i + 1], ARGV[i + 5], ARGV[i + 9]
  local key = ns .. 'job:' .. id
  local fresh = redis.call('EXISTS', key) == 0
  if fresh and unique ~= '' then
    fresh = redis.call('SET', ns .. 'unique:' .. unique, id, 'NX', 'PX', tonumber(ARGV[i + 6])) ~= false
  end
  if fresh then
    local due = tonumber(ARGV[i + 8])
    local state = due > now and 'scheduled' or 'pending'
    redis.call('HSET', key,
      'id', id, 'kind', kind, 'payload', ARGV[i + 2], 'attempts', 0,
      'max_attempts', ARGV[i + 3], 'state', state, 'created_ms', now,
      'request_id', ARGV[i + 4], 'traceparent', ARGV[i + 7], 'history', '[]')
    if owner ~= '' then
      redis.call('HSET', key, 'owner', owner)
    end
    if state == 'scheduled' then
      -- Its queue wait starts when it falls due.
      redis.call('HSET', key, 'due_ms', due)
      redis.call('ZADD', ns .. 'scheduled', due, id)
    else
      -- Its wake token wakes one idle worker of the kind blocked on its wake list; the cap
      -- keeps the list bounded when no worker is listening.
      make_ready(ns, kind, id, owner, cap)
    end
    added = added + 1
  end
end
return added

#!lua flags=allow-oom
-- allow-oom: runs even when Redis is over maxmemory, so running jobs keep their leases and
-- their outcomes are recorded while new work waits (SPEC section 9, "Redis full"); what it
-- writes is bounded by the jobs already claimed.
-- Extends the leases of the jobs a live worker still holds (its heartbeat), or, with
-- mode 'release', hands them back to the front of their kind's queue uncounted (graceful
-- shutdown). Fenced by each attempt's token. Returns the ids it renewed or released: a
-- claim missing from the answer is no longer this worker's (its lease expired and another
-- worker may hold it), so the worker stops its handler.
-- KEYS: the shard's layout (`ready.lua`) with the kinds of the jobs.
-- ARGV: mode (renew|release), lease_ms, wake_cap, then id, token pairs
local K = layout()
local now = now_ms()
local mode, lease, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local done = {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local job = job_get(K, id, 'token', 'kind')
  -- A job of a kind not among the keys is not handed back; its lease runs out instead.
  if job[1] == token and (mode == 'renew' or K.of[job[2]]) then
    table.insert(done, id)
    if mode == 'renew' then
      redis.call('ZADD', K.running, 'XX', now + lease, id)
    else
      local kind = job[2]
      redis.call('ZREM', K.running, id)
      if redis.call('HINCRBY', K.active, kind, -1) <= 0 then
        redis.call('HDEL', K.active, kind)
      end
      redis.call('HINCRBY', K.jobs, id .. '|attempts', -1)
      job_set(K, id, 'state', 'pending', 'token', '', 'due_ms', now)
      redis.call('LPUSH', K.of[kind].pending, id)
      wake(K.of[kind], cap)
    end
  end
end
return done

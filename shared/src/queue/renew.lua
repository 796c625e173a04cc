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
  local run = get_run(K, id)
  -- A job of a kind not among the keys is not handed back; its lease runs out instead.
  if run and token_of(run) == token and (mode == 'renew' or K.of[run.kind]) then
    table.insert(done, id)
    if mode == 'renew' then
      redis.call('ZADD', K.running, 'XX', now + lease, id)
    else
      redis.call('ZREM', K.running, id)
      if redis.call('HINCRBY', K.active, run.kind, -1) <= 0 then
        redis.call('HDEL', K.active, run.kind)
      end
      run.attempts, run.state, run.due_ms = run.attempts - 1, 'pending', now
      put_run(K, id, run)
      redis.call('LPUSH', K.of[run.kind].pending, id)
      wake(K.of[run.kind], cap)
    end
  end
end
return done

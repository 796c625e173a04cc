#!lua
-- Declared (a shebang with no flags) so that Redis refuses the whole script when it is over
-- maxmemory, before it runs, instead of failing at its first write and leaving the writes
-- before it applied (SPEC section 9, "Redis full").
-- Retries or discards, in one bounded step, the dead jobs that match a filter (SPEC section
-- 10, bulk retry and discard). It looks at up to `batch` dead jobs that ended in
-- [min_ms, max_ms], skipping the first `skip` of them (the ones earlier steps looked at and
-- left because they did not match); the caller repeats with skip + returned skipped until
-- fewer than `batch` were looked at. A retried job goes back to its kind's queue with fresh
-- attempts and its history kept; a discarded one is deleted.
-- Returns {looked_at, skipped, changed ids...}.
-- KEYS: the shard's layout (`ready.lua`) with every kind it knows of.
-- ARGV: action (retry|discard), kind ('' for any), error_contains (lowercase, '' for
--       any), min_ms, max_ms, skip, batch, wake_cap
local K = layout()
local action, needle = ARGV[1], ARGV[3]
local skip, batch, cap = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local ids = redis.call('ZRANGEBYSCORE', K.dead, ARGV[4], ARGV[5], 'LIMIT', skip, batch)
local skipped, changed = 0, {}
local now = now_ms()
for _, id in ipairs(ids) do
  local run = get_run(K, id)
  local kind = run and run.kind
  -- A job of a kind whose keys the caller did not pass (it learns the shard's kinds before
  -- each bulk action, so only a kind first pushed since) is left, as one that does not match.
  local matches = run and K.of[kind] ~= nil and (ARGV[2] == '' or kind == ARGV[2])
    and (needle == '' or string.find(string.lower(job_get(K, id, 'last_error') or ''), needle, 1, true) ~= nil)
  if not run then
    -- Its record is gone: nothing to retry.
    redis.call('ZREM', K.dead, id)
  elseif not matches then
    skipped = skipped + 1
  elseif action == 'discard' then
    redis.call('ZREM', K.dead, id)
    forget(K, id)
    table.insert(changed, id)
  else
    redis.call('ZREM', K.dead, id)
    run.state, run.attempts, run.due_ms, run.finished_ms = 'pending', 0, now, 0
    put_run(K, id, run)
    make_ready(K, kind, id, get_job(K, id).owner, cap)
    table.insert(changed, id)
  end
end
local reply = {#ids, skipped}
for _, id in ipairs(changed) do table.insert(reply, id) end
return reply

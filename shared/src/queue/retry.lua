#!lua
-- Declared (a shebang with no flags) so that Redis refuses the whole script when it is over
-- maxmemory, before it runs, instead of failing at its first write and leaving the writes
-- before it applied (SPEC section 9, "Redis full").
-- Sends a dead job back to its kind's queue with a fresh set of attempts (an operator's
-- decision, after fixing what killed it). Its history is kept. Returns 0 unless it was dead.
-- KEYS: the shard's layout (`ready.lua`) with every kind it knows of.
-- ARGV: id, wake_cap
local K = layout()
local id, cap = ARGV[1], tonumber(ARGV[2])
local run = get_run(K, id)
if not run or run.state ~= 'dead' then
  return 0
end
redis.call('ZREM', K.dead, id)
run.state, run.attempts, run.due_ms, run.finished_ms = 'pending', 0, now_ms(), 0
put_run(K, id, run)
make_ready(K, run.kind, id, get_job(K, id).owner, cap)
return 1

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
local job = job_get(K, id, 'state', 'kind', 'owner')
if job[1] ~= 'dead' then
  return 0
end
redis.call('ZREM', K.dead, id)
job_set(K, id, 'state', 'pending', 'attempts', 0, 'token', '', 'due_ms', now_ms())
job_del(K, id, 'finished_ms')
make_ready(K, job[2], id, job[3], cap)
return 1

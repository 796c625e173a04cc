#!lua flags=allow-oom
-- allow-oom: runs even when Redis is over maxmemory, so running jobs keep their leases and
-- their outcomes are recorded while new work waits (SPEC section 9, "Redis full"); what it
-- writes is bounded by the jobs already claimed.
-- Records the outcomes of a batch of attempts, each fenced by its attempt's token: a worker
-- whose lease expired (and whose job was handed to another worker) cannot overwrite the new
-- run's result. Returns, per job, 1 when recorded and 0 when refused.
-- Finished jobs keep their records until fetch.lua's sweep ends their retention.
-- KEYS: the shard's layout (`ready.lua`) with the kinds of the jobs.
-- ARGV: per job: id, token, outcome (ok|retry|dead|held), duration_ms, error, retry_delay_ms
local K = layout()
local now = now_ms()
local recorded = {}

-- One job of the kind fewer running, for its concurrency limit (see fetch.lua).
-- The field goes at zero, so an idle queue keeps no key for it.
local function free_slot(kind)
  if redis.call('HINCRBY', K.active, kind, -1) <= 0 then
    redis.call('HDEL', K.active, kind)
  end
end

for i = 1, #ARGV, 6 do
  local id, token, outcome = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local run = get_run(K, id)
  if not run or token_of(run) ~= token then
    table.insert(recorded, 0)
  else
    free_slot(run.kind)
    redis.call('ZREM', K.running, id)
    if outcome == 'ok' then
      -- The hot path: the successful attempt stays in the run's fields (worker, started_ms,
      -- duration_ms); readers append it to the history. No JSON work.
      run.state, run.finished_ms, run.duration_ms = 'done', now, ARGV[i + 3]
      redis.call('ZADD', K.done, now, id)
    elseif outcome == 'held' then
      -- Not run: the kind's dependency is down and its worker holds the kind. Back to the
      -- front of its kind's queue, the attempt uncounted and no history entry (the job did
      -- not fail); no wake token, since the workers of the kind are holding it too, and one
      -- that is not finds it at its next look.
      run.attempts, run.state, run.due_ms = run.attempts - 1, 'pending', now
      job_set(K, id, 'last_error', ARGV[i + 4])
      redis.call('LPUSH', K.of[run.kind].pending, id)
    else
      local entry = {attempt = run.attempts, worker = run.worker, started_ms = run.started_ms,
        duration_ms = tonumber(ARGV[i + 3]), error = ARGV[i + 4]}
      count_failure(K, now)
      job_set(K, id, 'last_error', ARGV[i + 4])
      if outcome == 'retry' then
        entry.retry_in_ms = tonumber(ARGV[i + 5])
        run.state, run.due_ms = 'scheduled', now + tonumber(ARGV[i + 5])
        redis.call('ZADD', K.scheduled, run.due_ms, id)
      else
        run.state, run.finished_ms = 'dead', now
        redis.call('ZADD', K.dead, now, id)
      end
      push_history(K, id, entry)
    end
    put_run(K, id, run)
    table.insert(recorded, 1)
  end
end
return recorded

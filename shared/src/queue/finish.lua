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
  local job = job_get(K, id, 'token', 'attempts', 'worker', 'started_ms', 'history', 'kind')
  if job[1] ~= token then
    table.insert(recorded, 0)
  else
    free_slot(job[6])
    redis.call('ZREM', K.running, id)
    if outcome == 'ok' then
      -- The hot path: the successful attempt stays in the flat fields (worker, started_ms,
      -- duration_ms); readers append it to the history. No JSON work.
      job_set(K, id, 'token', '', 'state', 'done', 'finished_ms', now, 'duration_ms', ARGV[i + 3])
      redis.call('ZADD', K.done, now, id)
    elseif outcome == 'held' then
      -- Not run: the kind's dependency is down and its worker holds the kind. Back to the
      -- front of its kind's queue, the attempt uncounted and no history entry (the job did
      -- not fail); no wake token, since the workers of the kind are holding it too, and one
      -- that is not finds it at its next look.
      redis.call('HINCRBY', K.jobs, id .. '|attempts', -1)
      job_set(K, id, 'token', '', 'state', 'pending', 'last_error', ARGV[i + 4], 'due_ms', now)
      redis.call('LPUSH', K.of[job[6]].pending, id)
    else
      local history = {}
      if job[5] and job[5] ~= '[]' then history = cjson.decode(job[5]) end
      local entry = {attempt = tonumber(job[2]), worker = job[3], started_ms = tonumber(job[4]),
        duration_ms = tonumber(ARGV[i + 3]), error = ARGV[i + 4]}
      count_failure(K, now)
      if outcome == 'retry' then entry.retry_in_ms = tonumber(ARGV[i + 5]) end
      table.insert(history, entry)
      local encoded = cjson.encode(history)
      if outcome == 'retry' then
        job_set(K, id, 'history', encoded, 'token', '', 'state', 'scheduled',
          'last_error', ARGV[i + 4], 'due_ms', now + tonumber(ARGV[i + 5]))
        redis.call('ZADD', K.scheduled, now + tonumber(ARGV[i + 5]), id)
      else
        job_set(K, id, 'history', encoded, 'token', '', 'state', 'dead',
          'last_error', ARGV[i + 4], 'finished_ms', now)
        redis.call('ZADD', K.dead, now, id)
      end
    end
    table.insert(recorded, 1)
  end
end
return recorded

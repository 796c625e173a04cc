#!lua flags=allow-oom
-- allow-oom: runs even when Redis is over maxmemory, so running jobs keep their leases and
-- their outcomes are recorded while new work waits (SPEC section 9, "Redis full"); what it
-- writes is bounded by the jobs already claimed.
-- Records the outcomes of a batch of attempts, each fenced by its attempt's token: a worker
-- whose lease expired (and whose job was handed to another worker) cannot overwrite the new
-- run's result. Returns, per job, 1 when recorded and 0 when refused.
-- KEYS[1]: a key of the namespace, for routing.
-- ARGV: NS, done_retention_ms, dead_retention_ms, then per job: id, token, outcome
--       (ok|retry|dead|held), duration_ms, error, retry_delay_ms
local ns, done_ttl, dead_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local recorded = {}

-- One job of the kind fewer running, for its concurrency limit (see fetch.lua).
-- The field goes at zero, so an idle queue keeps no key for it.
local function free_slot(kind)
  if redis.call('HINCRBY', ns .. 'active', kind, -1) <= 0 then
    redis.call('HDEL', ns .. 'active', kind)
  end
end

for i = 4, #ARGV, 6 do
  local id, token, outcome = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = ns .. 'job:' .. id
  local job = redis.call('HMGET', key, 'token', 'attempts', 'worker', 'started_ms', 'history', 'kind')
  if job[1] ~= token then
    table.insert(recorded, 0)
  else
    free_slot(job[6])
    if outcome == 'ok' then
      -- The hot path: the successful attempt stays in the flat fields (worker, started_ms,
      -- duration_ms); readers append it to the history. No JSON work.
      redis.call('ZREM', ns .. 'running', id)
      redis.call('HSET', key, 'token', '', 'state', 'done', 'finished_ms', now, 'duration_ms', ARGV[i + 3])
      redis.call('ZADD', ns .. 'done', now, id)
      redis.call('PEXPIRE', key, done_ttl)
      table.insert(recorded, 1)
    elseif outcome == 'held' then
      -- Not run: the kind's dependency is down and its worker holds the kind. Back to the
      -- front of its kind's queue, the attempt uncounted and no history entry (the job did
      -- not fail); no wake token, since the workers of the kind are holding it too, and one
      -- that is not finds it at its next look.
      redis.call('ZREM', ns .. 'running', id)
      redis.call('HINCRBY', key, 'attempts', -1)
      redis.call('HSET', key, 'token', '', 'state', 'pending', 'last_error', ARGV[i + 4], 'due_ms', now)
      redis.call('LPUSH', ns .. 'pending:' .. job[6], id)
      table.insert(recorded, 1)
    else
      local history = {}
      if job[5] and job[5] ~= '[]' then history = cjson.decode(job[5]) end
      local entry = {attempt = tonumber(job[2]), worker = job[3], started_ms = tonumber(job[4]),
        duration_ms = tonumber(ARGV[i + 3]), error = ARGV[i + 4]}
      -- Failed attempts per minute, for the admin overview's "failed in the last hour".
      local bucket = ns .. 'failed:' .. math.floor(now / 60000)
      redis.call('INCR', bucket)
      redis.call('PEXPIRE', bucket, 3900000)
      if outcome == 'retry' then entry.retry_in_ms = tonumber(ARGV[i + 5]) end
      table.insert(history, entry)
      local encoded = cjson.encode(history)
      redis.call('ZREM', ns .. 'running', id)
      if outcome == 'retry' then
        redis.call('HSET', key, 'history', encoded, 'token', '', 'state', 'scheduled', 'last_error', ARGV[i + 4],
          'due_ms', now + tonumber(ARGV[i + 5]))
        redis.call('ZADD', ns .. 'scheduled', now + tonumber(ARGV[i + 5]), id)
      else
        redis.call('HSET', key, 'history', encoded, 'token', '', 'state', 'dead', 'last_error', ARGV[i + 4],
          'finished_ms', now)
        redis.call('ZADD', ns .. 'dead', now, id)
        redis.call('PEXPIRE', key, dead_ttl)
      end
      table.insert(recorded, 1)
    end
  end
end
return recorded

-- Adds a batch of jobs, skipping any whose id already exists, so a row the relay pushes
-- twice (a push that succeeded before its transaction failed to commit) is still one job.
-- KEYS: pending list, wake list
-- ARGV: job key prefix, wake_cap, then per job: id, kind, payload, max_attempts, request_id
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]
local added = 0
for i = 3, #ARGV, 5 do
  local id = ARGV[i]
  local key = prefix .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key,
      'id', id, 'kind', ARGV[i + 1], 'payload', ARGV[i + 2], 'attempts', 0,
      'max_attempts', ARGV[i + 3], 'state', 'pending', 'created_ms', now,
      'request_id', ARGV[i + 4], 'history', '[]')
    redis.call('RPUSH', KEYS[1], id)
    -- One token per job wakes one idle worker blocked on the wake list; the cap keeps the
    -- list bounded when no worker is listening.
    redis.call('RPUSH', KEYS[2], '1')
    added = added + 1
  end
end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
return added

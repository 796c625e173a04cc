#!lua flags=allow-oom
-- allow-oom: like renew.lua and finish.lua, so running jobs keep their permits and give
-- them back when Redis is full.
-- The permits of one kind of a sharded queue (see admit.lua), in the queue's first shard.
-- A permit names one claim, `<shard>|<id>|<token>`, scored by when its lease runs out, so a
-- permit whose worker died lapses with its job's lease.
-- KEYS[1]: `permits:<kind>`; KEYS[2]: `bucket:<kind>`.
-- ARGV: mode, lease_ms, holder, reserved, limits (as admit.lua returned them), then permits
-- mode 'settle': a claim admitted `reserved` jobs and claimed the permits listed: they
--   replace its reservations, and with a rate limit the tokens of the jobs not claimed go
--   back to the bucket;
-- mode 'renew': the permits listed are extended by a lease (a heartbeat);
-- mode 'drop': the permits listed end (an outcome recorded, a job handed back).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode, lease = ARGV[1], tonumber(ARGV[2])
if mode == 'settle' then
  local holder, reserved, limits = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  for i = 1, reserved do
    redis.call('ZREM', KEYS[1], holder .. '#' .. i)
  end
  local unused = reserved - (#ARGV - 5)
  if unused > 0 and limits >= 2 then
    redis.call('HINCRBYFLOAT', KEYS[2], 'tokens', unused)
  end
end
for i = 6, #ARGV do
  if mode == 'drop' then
    redis.call('ZREM', KEYS[1], ARGV[i])
  elseif mode == 'renew' then
    redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i])
  else
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  end
end
return 1

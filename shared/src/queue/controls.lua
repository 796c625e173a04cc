#!lua flags=allow-oom
-- allow-oom: controls only hold work back, so they must apply when Redis is full.
-- Replaces a queue's controls (fetch.lua reads them) with a newer copy from Postgres; an
-- older copy (a worker's read that raced an admin's change) is ignored. Returns 1 when
-- applied.
-- KEYS[1]: the namespace's `controls` hash.
-- ARGV: version, then field, value pairs (paused, paused:<kind>, rate:<kind>,
--       concurrency:<kind>)
local key, version = KEYS[1], tonumber(ARGV[1])
if tonumber(redis.call('HGET', key, 'version') or '-1') > version then
  return 0
end
redis.call('DEL', key)
redis.call('HSET', key, 'version', version)
for i = 2, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
return 1

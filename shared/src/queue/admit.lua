#!lua
-- Declared (a shebang with no flags) so that Redis refuses it when over maxmemory, like
-- fetch.lua (SPEC section 9, "Redis full").
-- The fleet-wide limits of one kind of a sharded queue (SPEC section 12): its jobs live in
-- several shards, but its limits are kept in one place, the queue's first shard, so they
-- hold for the whole fleet as on an unsharded queue (fetch.lua). Before a worker claims
-- from the shards it asks here how many it may claim, and holds that many reservations;
-- `permits.lua` then turns them into one permit per job claimed and gives back the rest.
-- KEYS[1]: the first shard's `controls`; KEYS[2]: `permits:<kind>`, the kind's claims
-- running (scored by when their lease runs out) and reservations (`<holder>#<i>`, scored by
-- when they lapse); KEYS[3]: `bucket:<kind>`, its rate limiter (as in fetch.lua).
-- ARGV: kind, n, holder (names this claim's reservations), hold_ms
-- Returns {admitted, wait_ms, limits}: limits is 0 for a kind without any (then nothing is
-- held and `admitted` is n), plus 1 with a concurrency limit and 2 with a rate.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind, n, holder, hold = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local controls = redis.call('HMGET', KEYS[1], 'concurrency:' .. kind, 'rate:' .. kind, 'version')
-- No copy of the controls: fetch.lua claims nothing either, until a copy is back.
if not controls[3] then
  return {0, 250, 0}
end
if not controls[1] and not controls[2] then
  return {n, 0, 0}
end
local wait, limits = 0, 0
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if controls[1] then
  limits = 1
  local free = tonumber(controls[1]) - redis.call('ZCARD', KEYS[2])
  if free < n then
    n = math.max(free, 0)
    wait = 50
  end
end
local rate = tonumber(controls[2])
if rate then
  limits = limits + 2
end
if rate and n > 0 then
  local tokens
  tokens, n, wait = take_tokens(KEYS[3], rate, n, now, wait)
  redis.call('HSET', KEYS[3], 'tokens', tokens - n, 'at', now)
  redis.call('PEXPIRE', KEYS[3], 60000)
end
for i = 1, n do
  redis.call('ZADD', KEYS[2], now + hold, holder .. '#' .. i)
end
return {n, wait, limits}

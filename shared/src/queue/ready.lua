-- Where a ready job waits, and a kind's rate limiter: shared by the scripts that make a job
-- ready, take it back or claim it, spliced in after their first line (see `queue::script`).
-- A kind fair by owner (SPEC section 10; its jobs carry an `owner`, see `JobSpec::fair_by`)
-- keeps each owner's ready jobs in `owned:<kind>:<owner>`, the owners with jobs waiting in
-- the ring `owners:<kind>` (each owner once) and their count in `owned:<kind>`; fetching
-- serves the ring in turns, one job per owner per turn, so an owner with hundreds of jobs
-- waiting delays another's single job by one turn. Any other job waits at the back of its
-- kind's list `pending:<kind>`. Either way a wake token wakes one idle worker of the kind.

local function make_ready(ns, kind, id, owner, cap)
  if owner and owner ~= '' then
    local list = ns .. 'owned:' .. kind .. ':' .. owner
    if redis.call('RPUSH', list, id) == 1 then
      redis.call('RPUSH', ns .. 'owners:' .. kind, owner)
    end
    redis.call('INCR', ns .. 'owned:' .. kind)
  else
    redis.call('RPUSH', ns .. 'pending:' .. kind, id)
  end
  redis.call('RPUSH', ns .. 'wake:' .. kind, '1')
  redis.call('LTRIM', ns .. 'wake:' .. kind, -cap, -1)
end

-- Moves up to `want` jobs from the owners' lists to the back of `pending:<kind>`, taking one
-- from each owner in turn; an owner with more left goes to the back of the ring.
local function take_turns(ns, kind, want)
  local ring, moved = ns .. 'owners:' .. kind, 0
  while moved < want do
    local owner = redis.call('LPOP', ring)
    if not owner then break end
    local list = ns .. 'owned:' .. kind .. ':' .. owner
    local id = redis.call('LPOP', list)
    if id then
      redis.call('RPUSH', ns .. 'pending:' .. kind, id)
      moved = moved + 1
    end
    if redis.call('LLEN', list) > 0 then
      redis.call('RPUSH', ring, owner)
    end
  end
  if moved > 0 then
    redis.call('DECRBY', ns .. 'owned:' .. kind, moved)
  end
end

-- Takes a ready job out of wherever it waits (a cancelled one).
local function unready(ns, kind, id, owner)
  if redis.call('LREM', ns .. 'pending:' .. kind, 1, id) > 0 or not owner or owner == '' then
    return
  end
  local list = ns .. 'owned:' .. kind .. ':' .. owner
  if redis.call('LREM', list, 1, id) > 0 then
    redis.call('DECR', ns .. 'owned:' .. kind)
    if redis.call('LLEN', list) == 0 then
      redis.call('LREM', ns .. 'owners:' .. kind, 1, owner)
    end
  end
end

-- Whether jobs of `kind` wait to be claimed.
local function has_ready(ns, kind)
  return redis.call('LLEN', ns .. 'pending:' .. kind) > 0
    or redis.call('LLEN', ns .. 'owners:' .. kind) > 0
end

-- A kind's rate limit (SPEC section 10): a token bucket in `limiter` refilled at `rate` per
-- second, holding at most a tenth of a second's worth (at least one), so the rate holds over
-- any window longer than that. Returns the tokens there are now, how many of `n` they allow,
-- and how long to wait (at least `wait`) before the next would be there; the caller stores
-- what is left.
local function take_tokens(limiter, rate, n, now, wait)
  local capacity = math.max(1, rate / 10)
  local state = redis.call('HMGET', limiter, 'tokens', 'at')
  local tokens = tonumber(state[1]) or capacity
  local at = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - at) * rate / 1000)
  if tokens < n then
    n = math.floor(tokens)
    wait = math.max(wait, math.ceil((1 - (tokens - n)) * 1000 / rate))
  end
  return tokens, n, wait
end

-- The shard's keys, its job records, where a ready job waits, and a kind's rate limiter:
-- shared by the queue's scripts, spliced in after their first line (see `queue::script`).
--
-- Every key a script touches is in its KEYS (SPEC section 12), laid out by
-- `queue::layout`: first the shard's fixed keys, then four keys per kind the script may
-- move a job of, then the script's own (a unique key, a rate limiter). `layout()` names them.
-- Jobs live as fields `<id>|<name>` of the one `jobs` hash, so a script that meets an id
-- it could not know beforehand (a due retry, an expired lease, the next job of a list)
-- still touches only declared keys.
--
-- A kind fair by owner (SPEC section 10; its jobs carry an `owner`, see `JobSpec::fair_by`)
-- keeps each owner's ready jobs in the sorted set `fair:<kind>` (members
-- `<owner>\0<seq>\0<id>`, all scored 0, so each owner's are a lexical range in the order
-- they became ready), the owners with jobs waiting in the ring `owners:<kind>` (each owner
-- once); fetching serves the ring in turns, one job per owner per turn, so an owner with
-- hundreds of jobs waiting delays another's single job by one turn. Any other job waits at
-- the back of its kind's list `pending:<kind>`. Either way a wake token in `wake:<kind>`
-- wakes one idle worker of the kind.

local FIXED = {'jobs', 'running', 'scheduled', 'done', 'dead', 'cancelled', 'controls',
  'active', 'failed', 'kinds'}
-- The shard's keys by name (`K.jobs`...), each kind's (`K.of[kind].pending`, `.wake`,
-- `.owners`, `.fair`), and the index of the script's own first key (`K.extra`).
local function layout()
  local K = {of = {}}
  for i, name in ipairs(FIXED) do K[name] = KEYS[i] end
  local ns = string.sub(KEYS[1], 1, -5)
  local pending = ns .. 'pending:'
  local i = #FIXED + 1
  while KEYS[i] and string.sub(KEYS[i], 1, #pending) == pending do
    K.of[string.sub(KEYS[i], #pending + 1)] =
      {pending = KEYS[i], wake = KEYS[i + 1], owners = KEYS[i + 2], fair = KEYS[i + 3]}
    i = i + 4
  end
  K.extra = i
  return K
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A job's record, in the shard's `jobs` hash (see `queue::record`), kept in few fields so
-- that a claim or an outcome costs a few lookups in that big hash:
-- `<id>|job`: what never changes once pushed, one line each, the payload last (it may hold
-- anything): kind, max_attempts, created_ms, request_id, traceparent, owner, payload;
-- `<id>|run`: what each step changes, space-separated: state, attempts, claims,
-- started_ms, due_ms, finished_ms, duration_ms, kind, worker (0 or '' when unset);
-- and what only some jobs have: `<id>|history` (failed attempts, JSON), `<id>|last_error`,
-- `<id>|turn` (its member in `fair:<kind>`).
-- A running job's claim token is `<worker>#<claims>`: claims only ever grow, from Redis'
-- time in microseconds when the job was pushed, so a token is never reused, not even by a
-- job pushed again after Redis lost everything; a job in any other state has none.
local JOB = {'kind', 'max_attempts', 'created_ms', 'request_id', 'traceparent', 'owner',
  'payload'}
local RUN = {'state', 'attempts', 'claims', 'started_ms', 'due_ms', 'finished_ms',
  'duration_ms', 'kind', 'worker'}
local NUMBERS = {attempts = true, claims = true, started_ms = true, due_ms = true,
  finished_ms = true, duration_ms = true}

-- The field `name` of a job's record split at `sep` into `names`, the last taking the rest
-- (a payload or a worker's name); nil when the job has no record.
local function read_fields(K, id, name, sep, names)
  local s = redis.call('HGET', K.jobs, id .. '|' .. name)
  if not s then return nil end
  local fields, at = {}, 1
  for i = 1, #names - 1 do
    local found = string.find(s, sep, at, true)
    fields[names[i]] = string.sub(s, at, found - 1)
    at = found + 1
  end
  fields[names[#names]] = string.sub(s, at)
  return fields
end

local function write_fields(K, id, name, sep, names, fields)
  local parts = {}
  for i, field in ipairs(names) do
    local value = fields[field] or (NUMBERS[field] and 0 or '')
    -- Whole numbers in full: Lua writes one of more than 14 digits with an exponent.
    if type(value) == 'number' then value = string.format('%.0f', value) end
    parts[i] = value
  end
  redis.call('HSET', K.jobs, id .. '|' .. name, table.concat(parts, sep))
end

local function get_job(K, id)
  return read_fields(K, id, 'job', '\n', JOB)
end

local function put_job(K, id, job)
  write_fields(K, id, 'job', '\n', JOB, job)
end

local function get_run(K, id)
  local run = read_fields(K, id, 'run', ' ', RUN)
  if run then
    for field in pairs(NUMBERS) do run[field] = tonumber(run[field]) end
  end
  return run
end

local function put_run(K, id, run)
  write_fields(K, id, 'run', ' ', RUN, run)
end

local function token_of(run)
  if run.state ~= 'running' then return '' end
  return run.worker .. '#' .. run.claims
end

-- A field a job may have on its own (history, last_error, turn).
local function job_get(K, id, name)
  return redis.call('HGET', K.jobs, id .. '|' .. name)
end

local function job_set(K, id, name, value)
  redis.call('HSET', K.jobs, id .. '|' .. name, value)
end

local function job_del(K, id, name)
  redis.call('HDEL', K.jobs, id .. '|' .. name)
end

-- Removes a job's record altogether.
local function forget(K, id)
  redis.call('HDEL', K.jobs, id .. '|job', id .. '|run', id .. '|history', id .. '|last_error',
    id .. '|turn')
end

-- Appends a failed attempt to a job's history.
local function push_history(K, id, entry)
  local history = cjson.decode(job_get(K, id, 'history') or '[]')
  table.insert(history, entry)
  job_set(K, id, 'history', cjson.encode(history))
end

-- Ends the retention of finished jobs: up to `limit` of `index` that ended before `before`
-- leave it and lose their records.
local function expire(K, index, before, limit)
  local ids = redis.call('ZRANGEBYSCORE', index, '-inf', before, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do forget(K, id) end
  if #ids > 0 then redis.call('ZREM', index, unpack(ids)) end
end

-- One failed attempt more in the minute of `now`, for the admin overview's "failed in the
-- last hour": the `failed` hash keeps a count per minute, and drops minutes older than an
-- hour once it holds more than an hour of them.
local function count_failure(K, now)
  local minute = math.floor(now / 60000)
  redis.call('HINCRBY', K.failed, minute, 1)
  if redis.call('HLEN', K.failed) > 64 then
    for _, m in ipairs(redis.call('HKEYS', K.failed)) do
      if tonumber(m) <= minute - 60 then redis.call('HDEL', K.failed, m) end
    end
  end
end

local function wake(k, cap)
  redis.call('RPUSH', k.wake, '1')
  redis.call('LTRIM', k.wake, -cap, -1)
end

-- The range of an owner's jobs in `fair:<kind>`.
local function owner_range(owner)
  return '[' .. owner .. '\0', '(' .. owner .. '\1'
end

-- Ready at the back of its kind's list (or its owner's), waking one worker of its kind.
local function make_ready(K, kind, id, owner, cap)
  local k = K.of[kind]
  if owner and owner ~= '' then
    local lo, hi = owner_range(owner)
    if #redis.call('ZRANGEBYLEX', k.fair, lo, hi, 'LIMIT', 0, 1) == 0 then
      redis.call('RPUSH', k.owners, owner)
    end
    local seq = redis.call('HINCRBY', K.jobs, 'seq', 1)
    local turn = owner .. '\0' .. string.format('%016d', seq) .. '\0' .. id
    redis.call('ZADD', k.fair, 0, turn)
    job_set(K, id, 'turn', turn)
  else
    redis.call('RPUSH', k.pending, id)
  end
  wake(k, cap)
end

-- Moves up to `want` jobs from the owners' turns to the back of `pending:<kind>`, taking one
-- from each owner in turn; an owner with more left goes to the back of the ring.
local function take_turns(K, kind, want)
  local k, moved = K.of[kind], 0
  while moved < want do
    local owner = redis.call('LPOP', k.owners)
    if not owner then break end
    local lo, hi = owner_range(owner)
    local turns = redis.call('ZRANGEBYLEX', k.fair, lo, hi, 'LIMIT', 0, 2)
    if turns[1] then
      redis.call('ZREM', k.fair, turns[1])
      -- After the owner, a separator, 16 digits and a separator.
      local id = string.sub(turns[1], #owner + 19)
      job_del(K, id, 'turn')
      redis.call('RPUSH', k.pending, id)
      moved = moved + 1
    end
    if turns[2] then
      redis.call('RPUSH', k.owners, owner)
    end
  end
end

-- Takes a ready job out of wherever it waits (a cancelled one).
local function unready(K, kind, id, owner)
  local k = K.of[kind]
  if redis.call('LREM', k.pending, 1, id) > 0 or not owner or owner == '' then
    return
  end
  local turn = job_get(K, id, 'turn')
  if turn and redis.call('ZREM', k.fair, turn) > 0 then
    job_del(K, id, 'turn')
    local lo, hi = owner_range(owner)
    if #redis.call('ZRANGEBYLEX', k.fair, lo, hi, 'LIMIT', 0, 1) == 0 then
      redis.call('LREM', k.owners, 1, owner)
    end
  end
end

-- Whether jobs of `kind` wait to be claimed.
local function has_ready(K, kind)
  local k = K.of[kind]
  return redis.call('LLEN', k.pending) > 0 or redis.call('LLEN', k.owners) > 0
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

-- Debug builds only (see `queue::script`): every key a script touches must be among its
-- KEYS (SPEC section 12), so the tests fail on a key a script builds for itself, which a
-- Redis Cluster would not route and no test on one Redis would notice. Every command the
-- scripts call names its key first, except TIME.
local redis = (function(real)
  local declared = {}
  for _, key in ipairs(KEYS) do declared[key] = true end
  local checked = setmetatable({}, {__index = real})
  checked.call = function(command, key, ...)
    if key == nil and string.upper(command) == 'TIME' then
      return real.call(command)
    end
    if not declared[key] then
      error('a script touched a key not in its KEYS: ' .. tostring(key) .. ' (' .. command .. ')')
    end
    return real.call(command, key, ...)
  end
  return checked
end)(redis)

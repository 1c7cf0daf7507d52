-- window (prepended to the scripts that use it): a record's dedupe marks (SPEC §3).
-- They live in element 1 of the record list (worker/codec.py): fixed-width records
-- '<12-character mark><10-digit epoch seconds>', or '*' once more than SPILL were held at
-- once; then they are in the record's window zset (mark -> seconds) until it empties.
-- A mark is a kind and an 11-character digest: 'a' accepted event id, 'k' applied dedupe
-- key, 'b' both (an event whose own id was its dedupe key: accepted, then applied).
-- Marks older than the cutoff are dropped by window_read, before any is looked up.
local W = 22
local SPILL = 32

local function window_read(R, Z, cutoff)
  local blob = redis.call('LINDEX', R, 1)
  if not blob then
    return false
  end
  if blob == '*' then
    redis.call('ZREMRANGEBYSCORE', Z, '-inf', '(' .. cutoff)
    if redis.call('EXISTS', Z) == 0 then
      redis.call('LSET', R, 1, '')
      return ''
    end
    return blob
  end
  local kept, dropped, limit = {}, false, tonumber(cutoff)
  for i = 1, #blob, W do
    if tonumber(string.sub(blob, i + 12, i + W - 1)) >= limit then
      kept[#kept + 1] = string.sub(blob, i, i + W - 1)
    else
      dropped = true
    end
  end
  if dropped then
    blob = table.concat(kept)
    redis.call('LSET', R, 1, blob)
  end
  return blob
end

local function window_find(Z, blob, mark)
  if not blob then
    return false
  end
  if blob == '*' then
    local seen = redis.call('ZSCORE', Z, mark)
    return seen and tonumber(seen) or false
  end
  for i = 1, #blob, W do
    if string.sub(blob, i, i + 11) == mark then
      return tonumber(string.sub(blob, i + 12, i + W - 1))
    end
  end
  return false
end

local function window_remove(R, Z, blob, mark)
  if blob == '*' then
    redis.call('ZREM', Z, mark)
    return blob
  end
  local kept, found = {}, false
  for i = 1, #blob, W do
    local rec = string.sub(blob, i, i + W - 1)
    if string.sub(rec, 1, 12) == mark then
      found = true
    else
      kept[#kept + 1] = rec
    end
  end
  if found then
    blob = table.concat(kept)
    redis.call('LSET', R, 1, blob)
  end
  return blob
end

local function window_add(R, Z, blob, mark, now)
  if blob == '*' then
    redis.call('ZADD', Z, now, mark)
    return blob
  end
  if #blob >= W * SPILL then
    for i = 1, #blob, W do
      redis.call('ZADD', Z, tonumber(string.sub(blob, i + 12, i + W - 1)),
                 string.sub(blob, i, i + 11))
    end
    redis.call('ZADD', Z, now, mark)
    redis.call('LSET', R, 1, '*')
    return '*'
  end
  blob = blob .. mark .. string.format('%010d', tonumber(now))
  redis.call('LSET', R, 1, blob)
  return blob
end

-- Turn mark OLD into NEW seen at NOW with one write (an accepted event applied: 'a' to
-- 'b'); NEW is added when OLD is not there.
local function window_rekind(R, Z, blob, old, new, now)
  if blob ~= '*' then
    for i = 1, #blob, W do
      if string.sub(blob, i, i + 11) == old then
        blob = string.sub(blob, 1, i - 1) .. new .. string.format('%010d', tonumber(now))
               .. string.sub(blob, i + W)
        redis.call('LSET', R, 1, blob)
        return blob
      end
    end
  else
    redis.call('ZREM', Z, old)
  end
  return window_add(R, Z, blob, new, now)
end

-- Keep the newest LIMIT history entries: elements 0 (record) and 1 (marks) stay.
local function history_trim(R, limit)
  if limit > 0 and redis.call('LLEN', R) > limit + 2 then
    local head = redis.call('LPOP', R)
    local marks = redis.call('LPOP', R)
    redis.call('LTRIM', R, -limit, -1)
    redis.call('LPUSH', R, marks, head)
  end
end

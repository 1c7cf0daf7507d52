-- commit: apply one computed change to a record, all or nothing.
-- Guarantees: the change lands only if the stored version is the one it was computed
-- from, the caller still holds the record's lease, its dedupe key was not applied within
-- the window and (when it pops) the inbox head is the event it applied. Then record,
-- history, dedupe window, inbox, indexes, retry schedule and the mirror's outbox change in
-- one step: no reader ever sees half, and the outbox holds every applied change in commit
-- order (per shard). Every key is in the record's shard (one hash tag, one cluster slot).
-- The record is element 0 of the record list (worker/codec.py), its dedupe marks element
-- 1 (window.lua), its history the rest.
-- KEYS: record, inbox, window zset, lease, retries, outbox, deleted, purged,
--       idx_remove..., idx_add..., link_remove..., link_add... (links hashes)
-- ARGV: expected_version, head ('' deletes: a tombstone '0|x<now_s>'), dedupe digest,
--       pop_event_id, owner, retry_at, cancel_retry, history_limit, n_remove, n_add,
--       record_id, outbox_entry ('' for none), now_s, cutoff_s, n_link_remove,
--       n_link_add, event_applied ('1': the dedupe key is the popped event's id),
--       link values (one per link key)..., entries...
local head = redis.call('LINDEX', KEYS[1], 0)
local current = 0
if head then
  current = tonumber(string.match(head, '^(%d+)'))
end
if current ~= tonumber(ARGV[1]) then
  return 'conflict'
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[5] then
  return 'conflict'
end
local R, Z = KEYS[1], KEYS[3]
local blob = false
if ARGV[3] ~= '' then
  blob = window_read(R, Z, ARGV[14])
  if window_find(Z, blob, 'k' .. ARGV[3]) or window_find(Z, blob, 'b' .. ARGV[3]) then
    return 'duplicate'
  end
end
if ARGV[4] ~= '' then
  local item = redis.call('LINDEX', KEYS[2], 0)
  if not item or cjson.decode(item)[1] ~= ARGV[4] then
    return 'conflict'
  end
  redis.call('LPOP', KEYS[2])
end
local rid = ARGV[11]
local new_head = ARGV[2]
if new_head == '' then
  new_head = '0|x' .. ARGV[13]
  redis.call('ZADD', KEYS[7], ARGV[13], rid)
else
  redis.call('ZREM', KEYS[7], rid)
  redis.call('ZREM', KEYS[8], rid)
end
if head then
  redis.call('LSET', R, 0, new_head)
else
  redis.call('RPUSH', R, new_head, '')
  blob = ''
end
if ARGV[3] ~= '' then
  if ARGV[17] == '1' then
    window_rekind(R, Z, blob, 'a' .. ARGV[3], 'b' .. ARGV[3], ARGV[13])
  else
    window_add(R, Z, blob, 'k' .. ARGV[3], ARGV[13])
  end
end
local n_remove, n_add = tonumber(ARGV[9]), tonumber(ARGV[10])
local n_link_remove, n_link_add = tonumber(ARGV[15]), tonumber(ARGV[16])
for i = 1, n_remove do
  redis.call('SREM', KEYS[8 + i], rid)
end
for i = 1, n_add do
  redis.call('SADD', KEYS[8 + n_remove + i], rid)
end
-- A links hash maps a lookup value to its one record, or to '*' with the set of them
-- in '<hash>:<value>' (same hash tag).
local first_link = 8 + n_remove + n_add
for i = 1, n_link_remove do
  local key, value = KEYS[first_link + i], ARGV[17 + i]
  local holder = redis.call('HGET', key, value)
  if holder == rid then
    redis.call('HDEL', key, value)
  elseif holder == '*' then
    local many = key .. ':' .. value
    redis.call('SREM', many, rid)
    if redis.call('SCARD', many) == 0 then
      redis.call('HDEL', key, value)
    end
  end
end
for i = 1, n_link_add do
  local key, value = KEYS[first_link + n_link_remove + i], ARGV[17 + n_link_remove + i]
  local holder = redis.call('HGET', key, value)
  if not holder then
    redis.call('HSET', key, value, rid)
  elseif holder == '*' then
    redis.call('SADD', key .. ':' .. value, rid)
  elseif holder ~= rid then
    redis.call('HSET', key, value, '*')
    redis.call('SADD', key .. ':' .. value, holder, rid)
  end
end
local first_entry = 18 + n_link_remove + n_link_add
for i = first_entry, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
end
history_trim(R, tonumber(ARGV[8]))
if ARGV[7] == '1' then
  redis.call('ZREM', KEYS[5], rid)
end
if ARGV[6] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[6], rid)
end
if ARGV[12] ~= '' then
  redis.call('RPUSH', KEYS[6], ARGV[12])
end
return 'ok'

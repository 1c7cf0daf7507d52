-- commit: apply one computed change to a record, all or nothing.
-- Guarantees: the change lands only if the stored version is the one it was computed
-- from, the caller still holds the record's lease, its dedupe key was never applied and
-- (when it pops) the inbox head is the event it applied. Then record, history, applied
-- set, inbox, indexes, retry schedule and the mirror's outbox change in one step: no
-- reader ever sees half, and the outbox holds every applied change in commit order.
-- KEYS: record, history, inbox, applied, lease, retries, outbox, idx_remove..., idx_add...
-- ARGV: expected_version, record_json ('' deletes), new_version, dedupe_key, pop_event_id,
--       owner, retry_at, cancel_retry, history_limit, n_remove, n_add, record_id,
--       outbox_entry ('' for none), entries...
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then
  return 'conflict'
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[6] then
  return 'conflict'
end
if ARGV[4] ~= '' and redis.call('SISMEMBER', KEYS[4], ARGV[4]) == 1 then
  return 'duplicate'
end
if ARGV[5] ~= '' then
  local head = redis.call('LINDEX', KEYS[3], 0)
  if not head or cjson.decode(head)[1] ~= ARGV[5] then
    return 'conflict'
  end
  redis.call('LPOP', KEYS[3])
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'v', ARGV[3], 'json', ARGV[2])
end
local n_remove, n_add = tonumber(ARGV[10]), tonumber(ARGV[11])
for i = 1, n_remove do
  redis.call('SREM', KEYS[7 + i], ARGV[12])
end
for i = 1, n_add do
  redis.call('SADD', KEYS[7 + n_remove + i], ARGV[12])
end
for i = 14, #ARGV do
  redis.call('RPUSH', KEYS[2], ARGV[i])
end
local limit = tonumber(ARGV[9])
if limit > 0 then
  redis.call('LTRIM', KEYS[2], -limit, -1)
end
if ARGV[4] ~= '' then
  redis.call('SADD', KEYS[4], ARGV[4])
end
if ARGV[8] == '1' then
  redis.call('ZREM', KEYS[6], ARGV[12])
end
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[6], ARGV[7], ARGV[12])
end
if ARGV[13] ~= '' then
  redis.call('RPUSH', KEYS[7], ARGV[13])
end
return 'ok'

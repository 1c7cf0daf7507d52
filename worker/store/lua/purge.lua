-- purge: drop a deleted record's keys once it has been deleted longer than the retention.
-- Guarantees: only a record that is still deleted (its head a tombstone), deleted before
-- the cutoff and with no event waiting in its inbox loses its history and dedupe window;
-- a record created again meanwhile is only taken off the deleted index. The purge is
-- remembered in the shard's purged zset (``history`` says so).
-- KEYS: record, window, inbox, deleted, purged    ARGV: record_id, cutoff_s, now_s
-- Returns 1 purged, 0 left alone.
local head = redis.call('LINDEX', KEYS[1], 0)
if not head or string.sub(head, 1, 3) ~= '0|x' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return 0
end
local when = redis.call('ZSCORE', KEYS[4], ARGV[1])
if not when or tonumber(when) > tonumber(ARGV[2]) or redis.call('LLEN', KEYS[3]) > 0 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
return 1

-- accept: append an event to its record's inbox once per event id within the window.
-- Guarantees: an event id whose mark is in the record's window zset enters its inbox no
-- second time (the mark and the RPUSH happen together); marks older than the window are
-- dropped first, so the zset holds (events in the window) marks at most; inbox order is
-- acceptance order, and the record is marked pending so a recovery sweep finds it even if
-- the accepting worker dies.
-- KEYS: window, inbox, pending
-- ARGV: mark, item, now (pending score), record_id, now_s (mark score), cutoff_s
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[6])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[4])
return 1

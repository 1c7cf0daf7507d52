-- accept: append an event to its record's inbox once per event id.
-- Guarantees: an event id enters a record's inbox at most once (SADD on the accepted set
-- and RPUSH happen together), inbox order is acceptance order, and the record is marked
-- pending so a recovery sweep finds it even if the accepting worker dies.
-- KEYS: accepted, inbox, pending    ARGV: event_id, item, now, record_id
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[4])
return 1

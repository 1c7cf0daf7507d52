-- accept: append an event to its record's inbox once per event id within the window.
-- Guarantees: an event id with an 'a' or 'b' mark in the record's window enters its inbox
-- no second time (the mark and the RPUSH happen together); marks older than the window
-- are dropped first, so the window holds (events within the window) marks at most; inbox
-- order is acceptance order, and the record is marked pending so a recovery sweep finds
-- it even if the accepting worker dies. A record list is created ('0|': no record yet).
-- KEYS: record, window zset, inbox, pending
-- ARGV: digest, item, now (pending score), record_id, now_s, cutoff_s
local R, Z = KEYS[1], KEYS[2]
local blob = window_read(R, Z, ARGV[6])
if not blob then
  redis.call('RPUSH', R, '0|', '')
  blob = ''
end
if window_find(Z, blob, 'a' .. ARGV[1]) or window_find(Z, blob, 'b' .. ARGV[1]) then
  return 0
end
window_add(R, Z, blob, 'a' .. ARGV[1], ARGV[5])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], 'NX', ARGV[3], ARGV[4])
return 1

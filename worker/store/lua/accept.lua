-- accept: append events to one record's inbox, each once per event id within the window.
-- Guarantees: an event id with an 'a' or 'b' mark in the record's window enters its inbox
-- no second time (the mark and the RPUSH happen together); marks older than the window
-- are dropped first, so the window holds (events within the window) marks at most; inbox
-- order is the order of the arguments, and the record is marked pending so a recovery
-- sweep finds it even if the accepting worker dies. All of one record's events of a batch
-- go in one call: if the call fails, none of them is in (on a cluster, a client retrying
-- commands one by one around a failover could otherwise accept a later event first).
-- A record list is created ('0|': no record yet).
-- KEYS: record, window zset, inbox, pending
-- ARGV: now (pending score), record_id, now_s, cutoff_s, then (digest, item) pairs
-- Returns one 1 (appended) or 0 (seen within the window) per pair.
local R, Z = KEYS[1], KEYS[2]
local blob = window_read(R, Z, ARGV[4])
if not blob then
  redis.call('RPUSH', R, '0|', '')
  blob = ''
end
local added, any = {}, false
for i = 5, #ARGV, 2 do
  local digest = ARGV[i]
  if window_find(Z, blob, 'a' .. digest) or window_find(Z, blob, 'b' .. digest) then
    added[#added + 1] = 0
  else
    blob = window_add(R, Z, blob, 'a' .. digest, ARGV[3])
    redis.call('RPUSH', KEYS[3], ARGV[i + 1])
    added[#added + 1] = 1
    any = true
  end
end
if any then
  redis.call('ZADD', KEYS[4], 'NX', ARGV[1], ARGV[2])
end
return added

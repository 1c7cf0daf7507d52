-- release: give up a record's lease, but only once its inbox is empty.
-- Guarantees: an event accepted while the holder was finishing is never stranded: either
-- it is in the inbox (release refuses, the holder drains on) or it comes after the
-- release (its acceptor finds the lease free). Only the holder can release.
-- With ARGV[3] = '1' (hand over) the lease goes whatever the inbox holds, and the record
-- stays pending, so another worker (kicked, or the recovery sweep) drains the rest.
-- KEYS: lease, inbox, pending    ARGV: owner, record_id, hand_over
-- Returns 1 released, 0 inbox not empty (still held), -1 not the holder.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[1])
  return 1
end
if redis.call('LLEN', KEYS[2]) > 0 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1

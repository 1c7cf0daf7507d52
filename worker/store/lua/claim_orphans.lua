-- claim_orphans: the records of one shard with queued work that nobody is draining, each
-- claimed for one kick. Guarantees: a record is returned only when its lease is absent and
-- it was not claimed within the last ARGV[3] ms, so recovery sweeps running on every
-- worker at once send one drain task per orphan per interval, not one each.
-- Lease and claim keys are derived from the shard's base ``<prefix>:{<tag>}:`` (ARGV[1]):
-- they share the pending zset's hash tag, so the script stays in one cluster slot.
-- KEYS: pending    ARGV: base, limit, claim_ms
local claimed = {}
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, record_id in ipairs(members) do
  if redis.call('EXISTS', ARGV[1] .. 'l:' .. record_id) == 0 then
    if redis.call('SET', ARGV[1] .. 'c:' .. record_id, '1', 'NX', 'PX', ARGV[3]) then
      table.insert(claimed, record_id)
    end
  end
end
return claimed

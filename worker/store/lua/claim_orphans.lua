-- claim_orphans: the records with queued work that nobody is draining, each claimed for
-- one kick. Guarantees: a record is returned only when its lease is absent and it was not
-- claimed within the last ARGV[3] ms, so recovery sweeps running on every worker at once
-- send one drain task per orphan per interval, not one each.
-- Lease and claim keys are derived from the prefix (ARGV[1]): this store assumes one Redis
-- server, not a cluster (see docs/contract.md, "Guarantees and limits").
-- KEYS: pending    ARGV: prefix, limit, claim_ms
local claimed = {}
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, record_id in ipairs(members) do
  if redis.call('EXISTS', ARGV[1] .. ':lease:' .. record_id) == 0 then
    if redis.call('SET', ARGV[1] .. ':claimed:' .. record_id, '1', 'NX', 'PX', ARGV[3]) then
      table.insert(claimed, record_id)
    end
  end
end
return claimed

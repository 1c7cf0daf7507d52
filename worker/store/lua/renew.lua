-- renew: extend a lease, only for its holder.
-- KEYS: lease    ARGV: owner, milliseconds    Returns 1 renewed, 0 not the holder.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1

-- link_add: add a record to a links hash (what commit.lua does for each link it adds;
-- used by `provisioning migrate`). Idempotent.
-- KEYS: links hash    ARGV: lookup value, record_id
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if not holder then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
elseif holder == '*' then
  redis.call('SADD', KEYS[1] .. ':' .. ARGV[1], ARGV[2])
elseif holder ~= ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], '*')
  redis.call('SADD', KEYS[1] .. ':' .. ARGV[1], holder, ARGV[2])
end
return 1

-- append: add history entries that changed nothing (no version check), keeping the record
-- (element 0; '0|' when there is none yet) and the history bound.
-- KEYS: record    ARGV: history_limit, entries...
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('RPUSH', KEYS[1], '0|')
end
for i = 2, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
end
local limit = tonumber(ARGV[1])
if limit > 0 and redis.call('LLEN', KEYS[1]) > limit + 1 then
  local head = redis.call('LPOP', KEYS[1])
  redis.call('LTRIM', KEYS[1], -limit, -1)
  redis.call('LPUSH', KEYS[1], head)
end
return 1

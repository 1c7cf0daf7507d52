-- append: add history entries that changed nothing (no version check), keeping the record
-- (element 0; '0|' when there is none yet), the marks (element 1) and the history bound.
-- KEYS: record    ARGV: history_limit, entries...
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('RPUSH', KEYS[1], '0|', '')
end
for i = 2, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
end
history_trim(KEYS[1], tonumber(ARGV[1]))
return 1

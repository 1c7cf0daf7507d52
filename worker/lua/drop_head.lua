-- drop_head: pop the inbox head that could not be applied (it went to the failed-task
-- store), only for the lease holder and only if the head is that event.
-- KEYS: inbox, lease, window    ARGV: event_id, owner, accepted mark
-- The event's accepted mark leaves the window so that a replay can be accepted again.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
local head = redis.call('LINDEX', KEYS[1], 0)
if not head or cjson.decode(head)[1] ~= ARGV[1] then
  return 0
end
redis.call('LPOP', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[3])
return 1

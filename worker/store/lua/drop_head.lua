-- drop_head: pop the inbox head that could not be applied (it went to the failed-task
-- store), only for the lease holder and only if the head is that event.
-- KEYS: inbox, lease, record, window zset    ARGV: event_id, owner, digest
-- The event's accepted mark leaves the window so that a replay can be accepted again; a
-- record list left with nothing (no record, no history, no mark) goes.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
local head = redis.call('LINDEX', KEYS[1], 0)
if not head or cjson.decode(head)[1] ~= ARGV[1] then
  return 0
end
redis.call('LPOP', KEYS[1])
local blob = redis.call('LINDEX', KEYS[3], 1)
if blob then
  blob = window_remove(KEYS[3], KEYS[4], blob, 'a' .. ARGV[3])
  if blob == '' and redis.call('LLEN', KEYS[3]) == 2
      and redis.call('LINDEX', KEYS[3], 0) == '0|' then
    redis.call('DEL', KEYS[3])
  end
end
return 1

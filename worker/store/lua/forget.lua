-- forget: let an event id be accepted again (a replay of an event that failed). Its
-- applied key, if the event was applied, stays in the window ('b' becomes 'k').
-- KEYS: record, window zset    ARGV: digest, cutoff_s
local blob = window_read(KEYS[1], KEYS[2], ARGV[2])
if not blob then
  return 0
end
blob = window_remove(KEYS[1], KEYS[2], blob, 'a' .. ARGV[1])
local seen = window_find(KEYS[2], blob, 'b' .. ARGV[1])
if seen then
  blob = window_remove(KEYS[1], KEYS[2], blob, 'b' .. ARGV[1])
  window_add(KEYS[1], KEYS[2], blob, 'k' .. ARGV[1], seen)
end
return 1

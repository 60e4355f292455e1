-- drop: forget a reservation that never took effect (every part rolled back), only while its
-- saga field is still the expected one (the attempt's own PENDING:<owner>): once recovery has
-- decided it (ABORTED), the entry stays, so that the id answers RELEASED from then on.
-- KEYS[1] res:{<id>}
-- ARGV: expected saga field
-- Returns 1 when dropped, else 0
if redis.call('HGET', KEYS[1], 'g') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1

-- ARGV: prefix
-- With replicated durability (agentpool.durability), the write that follows a call's own
-- writes on their connection, before WAIT: a call repeated with no write of its own (a
-- duplicate submit, a completion already recorded) still has one for WAIT to count, and so
-- WAIT covers the earlier write too. It runs when Redis is full (common.lua): the outcomes it
-- follows are taken then.
-- Returns the counter.
run_when_full()
return redis.call('INCR', P .. 'durable')

-- ARGV: prefix
-- Returns 1 when the queue was ever used (see queue_used), else 0.
return queue_used()

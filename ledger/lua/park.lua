-- Park a batch until a time: the earlier time wins, unless a supervisor is publishing it
-- (holds its lease): then this newer reason to wait wins (see park() in _common.lua).
-- ARGV[1] member cid|batch   ARGV[2] when (Unix s)
park(ARGV[1], tonumber(ARGV[2]))
return 1

-- Events already encoded by the caller, appended to the events stream many per call (the
-- suppressed events of an enqueue: ledger/optouts.py publish_suppressed).
-- ARGV[1] the events stream, ARGV[2] its approximate maximum length, ARGV[3..] the events.
for i = 3, #ARGV do publish(ARGV[1], ARGV[2], ARGV[i]) end
return #ARGV - 2

-- The projector's cost per event is mostly B-tree writes: each audit row
-- went into eight of them and each rotation rewrote six index entries of
-- its family row. This migration drops the indexes the reads can do
-- without.

-- The time bounds never decrease in seq, so FirstSeqSince, LastSeqBefore
-- and LowerMinTimeFrom binary-search the table by seq instead.
DROP INDEX audit_by_max_time;
DROP INDEX audit_by_min_time;

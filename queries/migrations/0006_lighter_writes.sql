-- The projector's cost per event is mostly B-tree writes: each audit row
-- went into eight of them and each rotation rewrote six index entries of
-- its family row. This migration drops the indexes the reads can do
-- without.

-- The time bounds never decrease in seq, so FirstSeqSince, LastSeqBefore
-- and LowerMinTimeFrom binary-search the table by seq instead.
DROP INDEX audit_by_max_time;
DROP INDEX audit_by_min_time;

-- Expiry by family instead of by row (audit_by_expiry): the events of a
-- family leave the stream within a second or so of each other, at its
-- absolute expiry plus the retention (family.archived later, and a refusal
-- recorded after that a retention after its own time). prune_at is the
-- earliest expires_at of the family's audit rows, NULL while none is
-- dated; Prune takes the families due, drops their expired rows through
-- audit_by_family, computes prune_at again from the rest, and drops the
-- family row with its last audit row, never before. That replaces
-- purge_at (when the stream drops the family's newest event): a family
-- without audit rows keeps it as its prune_at and goes then.
ALTER TABLE families ADD COLUMN prune_at INTEGER;
UPDATE families SET prune_at = purge_at;
UPDATE families SET prune_at = (SELECT min(a.expires_at) FROM audit_events AS a WHERE a.family_id = families.family_id)
WHERE EXISTS (SELECT 1 FROM audit_events AS a WHERE a.family_id = families.family_id);
CREATE INDEX families_to_prune ON families (prune_at) WHERE prune_at IS NOT NULL;
DROP INDEX audit_by_expiry;
DROP INDEX families_by_purge;
DROP INDEX families_undated;
ALTER TABLE families DROP COLUMN purge_at;

-- token.rotated is most of the stream, and a page of it alone is found
-- about as fast by reading the table in seq order (AuditBySeq), so
-- audit_by_type leaves it out. Keep the type in step with AuditByType and
-- Reader.auditRows (projections/read.go).
DROP INDEX audit_by_type;
CREATE INDEX audit_by_type ON audit_events (type, seq) WHERE type <> 'token.rotated';

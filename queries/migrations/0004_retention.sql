-- Retention: the stream drops each event when its TTL (Nats-TTL) runs out,
-- or at the stream's MaxAge for events stored without one; the read model
-- drops the rows of an event at the same moment (Projector.Prune), so a
-- rebuild from the stream yields the same rows. Times are unix ns.

-- When the stream drops the event; NULL: never (retention off), or a row
-- from before this migration, which Prune dates by the stream's MaxAge.
ALTER TABLE audit_events ADD COLUMN expires_at INTEGER;
CREATE INDEX audit_by_expiry ON audit_events (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX audit_undated ON audit_events (seq) WHERE expires_at IS NULL;

-- archived_at: when family.archived summarized the family. purge_at: when
-- the stream drops its newest event, and so the whole family.
ALTER TABLE families ADD COLUMN archived_at INTEGER;
ALTER TABLE families ADD COLUMN purge_at INTEGER;
CREATE INDEX families_to_archive ON families (absolute_expires_at) WHERE archived_at IS NULL;
CREATE INDEX families_by_purge ON families (purge_at) WHERE purge_at IS NOT NULL;
CREATE INDEX families_undated ON families (family_id) WHERE purge_at IS NULL;

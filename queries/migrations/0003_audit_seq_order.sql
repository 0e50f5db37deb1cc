-- Every audit page is read in seq order from an index that yields seq
-- order, so a page reads about as many rows as it returns and never sorts
-- the table.
--
-- A time window becomes a seq range. Event times are not monotonic in seq
-- (instances' clocks differ), so each row keeps two monotonic bounds:
-- max_time_upto, the latest time of any event up to it, and min_time_from,
-- the earliest time of any event from it on. Every event at or after
-- `since` lies at or after the first row whose max_time_upto >= since, and
-- every event before `until` at or before the last row whose
-- min_time_from < until. The projector keeps both as it appends (a late
-- event with an older time lowers min_time_from of the rows before it).
CREATE TABLE audit_events_bounded (
    seq           INTEGER PRIMARY KEY,
    id            TEXT NOT NULL,
    type          TEXT NOT NULL,
    time          INTEGER NOT NULL,
    family_id     TEXT NOT NULL,
    subject       TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    generation    INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    context       TEXT NOT NULL, -- JSON object, '{}' when none
    max_time_upto INTEGER NOT NULL,
    min_time_from INTEGER NOT NULL
);
INSERT INTO audit_events_bounded
SELECT seq, id, type, time, family_id, subject, client_id, generation, reason, context,
    max(time) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
    min(time) OVER (ORDER BY seq ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)
FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_bounded RENAME TO audit_events;
CREATE INDEX audit_by_family ON audit_events (family_id, seq);
CREATE INDEX audit_by_subject ON audit_events (subject, seq);
CREATE INDEX audit_by_client ON audit_events (client_id, seq);
CREATE INDEX audit_by_type ON audit_events (type, seq);
CREATE INDEX audit_by_max_time ON audit_events (max_time_upto);
CREATE INDEX audit_by_min_time ON audit_events (min_time_from);
-- The rare types in seq order, so several of them read together need no
-- merge of their (type, seq) ranges. Keep the list in step with rareTypes
-- (projections/read.go) and AuditByRareTypes.
CREATE INDEX audit_rare ON audit_events (seq)
WHERE type IN ('token.replay_detected', 'family.revoked', 'refresh.rejected');

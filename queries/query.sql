-- name: Position :one
SELECT applied_seq, applied_hash, stream_created FROM projection_position WHERE id = 1;

-- name: SetPosition :exec
INSERT INTO projection_position (id, applied_seq, applied_hash, stream_created)
VALUES (1, @applied_seq, @applied_hash, @stream_created)
ON CONFLICT (id) DO UPDATE SET applied_seq = excluded.applied_seq, applied_hash = excluded.applied_hash,
    stream_created = excluded.stream_created;

-- name: UpsertFamily :exec
-- Every event carries the family's whole state, so the newest one wins;
-- prune_at is the earliest expiry of the family's audit rows (@prune_at:
-- of the rows this batch adds; NULL for none).
INSERT INTO families (family_id, subject, client_id, scope, audience, status, generation, current_hash,
    created_at, last_used_at, idle_expires_at, absolute_expires_at, revoked_at, revoked_reason, last_seq,
    archived_at, prune_at, dpop_jkt)
VALUES (@family_id, @subject, @client_id, @scope, @audience, @status, @generation, @current_hash,
    @created_at, @last_used_at, @idle_expires_at, @absolute_expires_at, @revoked_at, @revoked_reason, @last_seq,
    @archived_at, @prune_at, @dpop_jkt)
ON CONFLICT (family_id) DO UPDATE SET
    status = excluded.status, generation = excluded.generation, current_hash = excluded.current_hash,
    last_used_at = excluded.last_used_at, idle_expires_at = excluded.idle_expires_at,
    revoked_at = excluded.revoked_at, revoked_reason = excluded.revoked_reason, last_seq = excluded.last_seq,
    archived_at = excluded.archived_at,
    prune_at = coalesce(min(families.prune_at, excluded.prune_at), families.prune_at, excluded.prune_at)
WHERE excluded.last_seq > families.last_seq;

-- name: AdvanceFamily :execrows
-- A rotation or reuse changes only these columns of its family; assigning
-- no other keeps SQLite from rewriting the family's entries in the indexes
-- on the rest. prune_at stays when it is already at or before the earliest
-- expiry of these events (@prune_at, 0 when they have none), which is
-- nearly always: a family's events expire within about a second of each
-- other. No row changes if the row is missing or newer, or would need an
-- earlier prune_at; then UpsertFamily decides, so prune_at is the same
-- however the events were batched (a rebuild gives the same rows).
UPDATE families SET generation = @generation, current_hash = @current_hash, last_used_at = @last_used_at,
    idle_expires_at = @idle_expires_at, last_seq = @last_seq
WHERE family_id = @family_id AND last_seq < @last_seq
  AND (CAST(@prune_at AS INTEGER) = 0 OR prune_at <= CAST(@prune_at AS INTEGER));

-- name: GetFamily :one
SELECT * FROM families WHERE family_id = @family_id;

-- name: FamilyPersonal :one
-- The subject as the family's newest event stores it: a family row lives
-- only as long as an event of it does (Prune).
SELECT id, subject, pii FROM audit_events INDEXED BY audit_by_family
WHERE family_id = @family_id ORDER BY seq DESC LIMIT 1;

-- name: FamilyTokens :many
-- A family's generations from its issued and rotated events, oldest first;
-- a generation was rotated when the next one was issued (rotated_at 0 for
-- the current one).
SELECT generation, time AS issued_at, CAST(COALESCE(LEAD(time) OVER (ORDER BY seq), 0) AS INTEGER) AS rotated_at
FROM audit_events INDEXED BY audit_by_family
WHERE family_id = @family_id AND type IN ('token.issued', 'token.rotated')
ORDER BY seq;

-- name: RevocableFamiliesBySubject :many
-- Families that can still be used: an expired one is dead already.
SELECT family_id FROM families WHERE subject = @subject AND status = 'active'
  AND idle_expires_at > @now AND absolute_expires_at > @now ORDER BY family_id;

-- name: RevocableFamiliesByClient :many
SELECT family_id FROM families WHERE client_id = @client_id AND status = 'active'
  AND idle_expires_at > @now AND absolute_expires_at > @now ORDER BY family_id;

-- name: FamiliesToArchive :many
-- Families past their absolute expiry without a family.archived yet.
SELECT family_id FROM families INDEXED BY families_to_archive
WHERE archived_at IS NULL AND absolute_expires_at <= @before
ORDER BY absolute_expires_at LIMIT @lim;

-- name: DateUndatedEvents :many
-- Rows from before retention: the stream drops them at its MaxAge. Their
-- families are due then (PruneFamilyAt).
UPDATE audit_events SET expires_at = audit_events.time + @max_age
WHERE seq IN (SELECT u.seq FROM audit_events AS u INDEXED BY audit_undated WHERE u.expires_at IS NULL LIMIT @lim)
RETURNING family_id, expires_at;

-- name: PruneFamilyAt :exec
-- The family has an audit row that expires at @at.
UPDATE families SET prune_at = CASE WHEN prune_at <= @at THEN prune_at ELSE @at END WHERE family_id = @family_id;

-- name: FamiliesToPrune :many
-- Families with audit rows expired by now.
SELECT family_id FROM families INDEXED BY families_to_prune WHERE prune_at <= @now ORDER BY prune_at LIMIT @lim;

-- name: DeleteExpiredFamilyEvents :execrows
DELETE FROM audit_events INDEXED BY audit_by_family WHERE family_id = @family_id AND expires_at <= @now;

-- name: DeleteEmptyFamily :execrows
-- A family goes with its last audit row.
DELETE FROM families
WHERE families.family_id = @family_id AND NOT EXISTS (SELECT 1 FROM audit_events AS a WHERE a.family_id = @family_id);

-- name: ReschedulePrune :exec
-- When the family's remaining audit rows start to expire.
UPDATE families SET prune_at = (SELECT min(a.expires_at) FROM audit_events AS a WHERE a.family_id = @family_id)
WHERE families.family_id = @family_id;

-- name: InsertAuditEvent :exec
INSERT INTO audit_events (seq, id, type, time, family_id, subject, client_id, generation, reason, context,
    max_time_upto, min_time_from, expires_at, presented_by, presented_generation, pii, dpop_jkt, presented_jkt)
VALUES (@seq, @id, @type, @time, @family_id, @subject, @client_id, @generation, @reason, @context,
    @max_time_upto, @min_time_from, @expires_at, @presented_by, @presented_generation, @pii, @dpop_jkt, @presented_jkt)
ON CONFLICT (seq) DO NOTHING;

-- name: BoundsBefore :one
-- The time bounds of the last row before seq: the next rows' max_time_upto
-- continues from the first, and the second tells whether an event at seq
-- lowers any min_time_from.
SELECT max_time_upto, min_time_from FROM audit_events WHERE seq < @seq ORDER BY seq DESC LIMIT 1;

-- name: FirstMinTimeFromAfter :one
-- The first row before seq whose min_time_from > time: from there on, the
-- rows before seq have an event at time after them (LowerMinTimeFrom).
-- Both time bounds never decrease in seq, so the rows on either side of a
-- time are a seq range, found here and below by binary search without an
-- index on the bounds: search halves [lo, hi] by the row at (or next to)
-- its middle, a look-up by rowid, until lo = hi: about log2(rows) steps.
WITH RECURSIVE search AS (
    SELECT (SELECT min(b.seq) FROM audit_events AS b) AS lo, (SELECT max(b.seq) FROM audit_events AS b WHERE b.seq < @seq) AS hi
    UNION ALL
    SELECT CASE WHEN a.min_time_from > @time THEN search.lo ELSE (search.lo + search.hi) / 2 + 1 END,
        CASE WHEN a.min_time_from > @time THEN (search.lo + search.hi) / 2 ELSE search.hi END
    FROM search JOIN audit_events AS a
        ON a.seq = (SELECT n.seq FROM audit_events AS n WHERE n.seq >= (search.lo + search.hi) / 2 ORDER BY n.seq LIMIT 1)
    WHERE search.lo < search.hi
)
SELECT a.seq FROM search JOIN audit_events AS a
    ON a.seq = (SELECT n.seq FROM audit_events AS n WHERE n.seq >= search.lo ORDER BY n.seq LIMIT 1)
WHERE search.lo = search.hi AND a.min_time_from > @time;

-- name: LowerMinTimeFrom :exec
-- Runs before the batch holding an event at time is inserted, on the rows
-- from FirstMinTimeFromAfter to it.
UPDATE audit_events SET min_time_from = @time WHERE seq >= @from_seq AND seq < @seq AND min_time_from > @time;

-- name: FirstSeqSince :one
-- Every event at or after since is at or after this seq: the first row
-- whose max_time_upto >= since.
WITH RECURSIVE search AS (
    SELECT (SELECT min(b.seq) FROM audit_events AS b) AS lo, (SELECT max(b.seq) FROM audit_events AS b) AS hi
    UNION ALL
    SELECT CASE WHEN a.max_time_upto >= @since THEN search.lo ELSE (search.lo + search.hi) / 2 + 1 END,
        CASE WHEN a.max_time_upto >= @since THEN (search.lo + search.hi) / 2 ELSE search.hi END
    FROM search JOIN audit_events AS a
        ON a.seq = (SELECT n.seq FROM audit_events AS n WHERE n.seq >= (search.lo + search.hi) / 2 ORDER BY n.seq LIMIT 1)
    WHERE search.lo < search.hi
)
SELECT a.seq FROM search JOIN audit_events AS a
    ON a.seq = (SELECT n.seq FROM audit_events AS n WHERE n.seq >= search.lo ORDER BY n.seq LIMIT 1)
WHERE search.lo = search.hi AND a.max_time_upto >= @since;

-- name: LastSeqBefore :one
-- Every event before until is at or before this seq: the last row whose
-- min_time_from < until.
WITH RECURSIVE search AS (
    SELECT (SELECT min(b.seq) FROM audit_events AS b) AS lo, (SELECT max(b.seq) FROM audit_events AS b) AS hi
    UNION ALL
    SELECT CASE WHEN a.min_time_from < @until THEN (search.lo + search.hi + 1) / 2 ELSE search.lo END,
        CASE WHEN a.min_time_from < @until THEN search.hi ELSE (search.lo + search.hi + 1) / 2 - 1 END
    FROM search JOIN audit_events AS a
        ON a.seq = (SELECT n.seq FROM audit_events AS n WHERE n.seq <= (search.lo + search.hi + 1) / 2 ORDER BY n.seq DESC LIMIT 1)
    WHERE search.lo < search.hi
)
SELECT a.seq FROM search JOIN audit_events AS a
    ON a.seq = (SELECT n.seq FROM audit_events AS n WHERE n.seq <= search.lo ORDER BY n.seq DESC LIMIT 1)
WHERE search.lo = search.hi AND a.min_time_from < @until;

-- The audit pages: each reads seq order from the index it names (INDEXED
-- BY: a plan that would sort fails to prepare instead), within the seq
-- range (@after_seq, @upto_seq] a time window maps to, and filters the
-- rest exactly. @types is a JSON array ('' for all types).

-- name: AuditByFamily :many
SELECT * FROM audit_events INDEXED BY audit_by_family
WHERE family_id = @family_id AND seq > @after_seq AND seq <= @upto_seq
  AND (CAST(@subject AS TEXT) = '' OR subject = @subject) AND (CAST(@client_id AS TEXT) = '' OR client_id = @client_id)
  AND (CAST(@presented_by AS TEXT) = '' OR presented_by = @presented_by)
  AND (CAST(@types AS TEXT) = '' OR type IN (SELECT value FROM json_each(@types)))
  AND time >= @since AND time < @until
ORDER BY seq LIMIT @lim;

-- name: AuditByPresenter :many
-- The events in which @presented_by presented another client's token.
-- audit_by_presenter holds only the rows with a presenter; presented_by
-- <> '' tells SQLite that these are all it needs (migration 0010).
SELECT * FROM audit_events INDEXED BY audit_by_presenter
WHERE presented_by = @presented_by AND presented_by <> '' AND seq > @after_seq AND seq <= @upto_seq
  AND (CAST(@subject AS TEXT) = '' OR subject = @subject) AND (CAST(@client_id AS TEXT) = '' OR client_id = @client_id)
  AND (CAST(@types AS TEXT) = '' OR type IN (SELECT value FROM json_each(@types)))
  AND time >= @since AND time < @until
ORDER BY seq LIMIT @lim;

-- name: AuditBySubject :many
SELECT * FROM audit_events INDEXED BY audit_by_subject
WHERE subject = @subject AND seq > @after_seq AND seq <= @upto_seq
  AND (CAST(@client_id AS TEXT) = '' OR client_id = @client_id)
  AND (CAST(@types AS TEXT) = '' OR type IN (SELECT value FROM json_each(@types)))
  AND time >= @since AND time < @until
ORDER BY seq LIMIT @lim;

-- name: AuditByClient :many
SELECT * FROM audit_events INDEXED BY audit_by_client
WHERE client_id = @client_id AND seq > @after_seq AND seq <= @upto_seq
  AND (CAST(@types AS TEXT) = '' OR type IN (SELECT value FROM json_each(@types)))
  AND time >= @since AND time < @until
ORDER BY seq LIMIT @lim;

-- name: AuditByType :many
-- One type other than token.rotated (which audit_by_type leaves out, and
-- AuditBySeq finds as fast), whatever its share of the stream.
SELECT * FROM audit_events INDEXED BY audit_by_type
WHERE type = @type AND type <> 'token.rotated' AND seq > @after_seq AND seq <= @upto_seq
  AND time >= @since AND time < @until
ORDER BY seq LIMIT @lim;

-- name: AuditByRareTypes :many
-- Several of the rare types (replays, key mismatches, revocations,
-- rejections) among many rotations; the literal list is audit_rare's.
SELECT * FROM audit_events INDEXED BY audit_rare
WHERE type IN ('token.replay_detected', 'token.key_mismatch', 'family.revoked', 'refresh.rejected')
  AND type IN (SELECT value FROM json_each(CAST(@types AS TEXT))) AND seq > @after_seq AND seq <= @upto_seq
  AND time >= @since AND time < @until
ORDER BY seq LIMIT @lim;

-- name: AuditBySeq :many
-- No filter, a time window, or types that make up much of the stream
-- (token.rotated among them): the table itself in seq order.
SELECT * FROM audit_events NOT INDEXED
WHERE seq > @after_seq AND seq <= @upto_seq
  AND (CAST(@types AS TEXT) = '' OR type IN (SELECT value FROM json_each(@types)))
  AND time >= @since AND time < @until
ORDER BY seq LIMIT @lim;

-- name: CountAuditEvents :one
SELECT count(*) FROM audit_events;

-- name: CountActiveFamilies :one
SELECT count(*) FROM families
WHERE status = 'active' AND idle_expires_at > @now AND absolute_expires_at > @now;

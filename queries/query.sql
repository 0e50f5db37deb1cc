-- name: AppliedSeq :one
SELECT applied_seq FROM projection_position WHERE id = 1;

-- name: SetAppliedSeq :exec
INSERT INTO projection_position (id, applied_seq) VALUES (1, @applied_seq)
ON CONFLICT (id) DO UPDATE SET applied_seq = excluded.applied_seq;

-- name: InsertAuditEvent :exec
INSERT INTO audit_events (seq, id, type, time, family_id, subject, client_id, generation, reason, context)
VALUES (@seq, @id, @type, @time, @family_id, @subject, @client_id, @generation, @reason, @context)
ON CONFLICT (seq) DO NOTHING;

-- name: UpsertFamily :exec
-- Every event carries the family's whole state, so the newest one wins.
INSERT INTO families (family_id, subject, client_id, scope, audience, status, generation, current_hash,
    created_at, last_used_at, idle_expires_at, absolute_expires_at, revoked_at, revoked_reason, last_seq)
VALUES (@family_id, @subject, @client_id, @scope, @audience, @status, @generation, @current_hash,
    @created_at, @last_used_at, @idle_expires_at, @absolute_expires_at, @revoked_at, @revoked_reason, @last_seq)
ON CONFLICT (family_id) DO UPDATE SET
    status = excluded.status, generation = excluded.generation, current_hash = excluded.current_hash,
    last_used_at = excluded.last_used_at, idle_expires_at = excluded.idle_expires_at,
    revoked_at = excluded.revoked_at, revoked_reason = excluded.revoked_reason, last_seq = excluded.last_seq
WHERE excluded.last_seq > families.last_seq;

-- name: InsertToken :exec
INSERT INTO tokens (token_hash, family_id, generation, issued_at) VALUES (@token_hash, @family_id, @generation, @issued_at)
ON CONFLICT (token_hash) DO NOTHING;

-- name: GetFamily :one
SELECT * FROM families WHERE family_id = @family_id;

-- name: FamilyTokens :many
-- A generation was rotated when the next one was issued; rotated_at is 0
-- for the current one.
SELECT generation, issued_at, CAST(COALESCE(LEAD(issued_at) OVER (ORDER BY generation), 0) AS INTEGER) AS rotated_at
FROM tokens WHERE family_id = @family_id ORDER BY generation;

-- name: CurrentToken :one
-- The family of a token that is its family's current one (introspection).
SELECT sqlc.embed(f), t.issued_at AS token_issued_at
FROM tokens t JOIN families f ON f.family_id = t.family_id
WHERE t.token_hash = @token_hash AND f.current_hash = t.token_hash;

-- name: RevocableFamiliesBySubject :many
SELECT family_id FROM families WHERE subject = @subject AND status = 'active' ORDER BY family_id;

-- name: RevocableFamiliesByClient :many
SELECT family_id FROM families WHERE client_id = @client_id AND status = 'active' ORDER BY family_id;

-- The audit queries share one shape; each leads with the filter its index
-- serves, and the others narrow the rows it reads. A leading + keeps SQLite
-- from driving a query by a filter's index it was not written for (it
-- would pick the time index for an unbounded range and sort the whole
-- table). @types is a JSON array ('' for all types).

-- name: AuditByFamily :many
SELECT * FROM audit_events
WHERE family_id = @family_id AND seq > @after_seq
  AND (CAST(@subject AS TEXT) = '' OR +subject = @subject) AND (CAST(@client_id AS TEXT) = '' OR +client_id = @client_id)
  AND (CAST(@types AS TEXT) = '' OR +type IN (SELECT value FROM json_each(@types)))
  AND +time >= @since AND +time < @until
ORDER BY seq LIMIT @lim;

-- name: AuditBySubject :many
SELECT * FROM audit_events
WHERE subject = @subject AND seq > @after_seq
  AND (CAST(@client_id AS TEXT) = '' OR +client_id = @client_id)
  AND (CAST(@types AS TEXT) = '' OR +type IN (SELECT value FROM json_each(@types)))
  AND +time >= @since AND +time < @until
ORDER BY seq LIMIT @lim;

-- name: AuditByClient :many
SELECT * FROM audit_events
WHERE client_id = @client_id AND seq > @after_seq
  AND (CAST(@types AS TEXT) = '' OR +type IN (SELECT value FROM json_each(@types)))
  AND +time >= @since AND +time < @until
ORDER BY seq LIMIT @lim;

-- name: AuditByTypes :many
-- Rare types (replays, revocations, rejections) among many rotations.
SELECT * FROM audit_events
WHERE type IN (SELECT value FROM json_each(CAST(@types AS TEXT))) AND seq > @after_seq
  AND +time >= @since AND +time < @until
ORDER BY seq LIMIT @lim;

-- name: AuditByTime :many
SELECT * FROM audit_events
WHERE time >= @since AND time < @until AND seq > @after_seq
  AND (CAST(@types AS TEXT) = '' OR +type IN (SELECT value FROM json_each(@types)))
ORDER BY seq LIMIT @lim;

-- name: AuditAll :many
SELECT * FROM audit_events
WHERE seq > @after_seq
ORDER BY seq LIMIT @lim;

-- name: CountAuditEvents :one
SELECT count(*) FROM audit_events;

-- name: CountActiveFamilies :one
SELECT count(*) FROM families
WHERE status = 'active' AND idle_expires_at > @now AND absolute_expires_at > @now;

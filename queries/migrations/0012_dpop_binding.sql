-- DPoP (RFC 9449): a family bound to a key shows the key's thumbprint,
-- and so does every audit row of it (the events carry it); a
-- token.key_mismatch row also names the other key, whose proof came with
-- the family's token. Events stored before DPoP name neither, so the
-- defaults are what a rebuild gives their rows too. A thumbprint is a
-- public key's hash, not personal data: it stays in clear.
ALTER TABLE families ADD COLUMN dpop_jkt TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN dpop_jkt TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN presented_jkt TEXT NOT NULL DEFAULT '';
-- token.key_mismatch is evidence of theft, as rare as a replay and read
-- with it: audit_rare holds it too. Keep the list in step with rareTypes
-- (projections/read.go) and AuditByRareTypes.
DROP INDEX audit_rare;
CREATE INDEX audit_rare ON audit_events (seq)
WHERE type IN ('token.replay_detected', 'token.key_mismatch', 'family.revoked', 'refresh.rejected');

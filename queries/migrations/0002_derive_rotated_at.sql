-- A token's rotation time is its child's issue time: derive it in
-- FamilyTokens instead of updating the parent's row on every rotation,
-- which touched one more random page per event.
ALTER TABLE tokens DROP COLUMN rotated_at;

-- Introspection answers from the family's newest event in the stream, not
-- from the read model, so nothing looks a family up by its current token's
-- hash any more: the index only cost every rotation an update.
DROP INDEX IF EXISTS families_by_current_hash;

-- Only a family's current token is ever looked up (introspection), and the
-- families table holds its hash: an index on it replaces the tokens table,
-- whose insert per rotation (a random key, two B-trees) was a fifth of the
-- projector's work. A family's chain of generations is read from its
-- token.issued and token.rotated audit rows.
DROP TABLE tokens;
CREATE INDEX families_by_current_hash ON families (current_hash);

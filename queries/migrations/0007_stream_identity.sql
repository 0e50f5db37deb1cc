-- What the read model was built from, so that it can tell at start whether
-- the stream is still that one (a restored backup, a recreated stream):
-- the SHA-256 of the last applied message (subject and data) and the
-- stream's created time, stored with applied_seq in each batch. NULL, as
-- in a read model from before, is unknown: the next batch records them.
ALTER TABLE projection_position ADD COLUMN applied_hash BLOB;
ALTER TABLE projection_position ADD COLUMN stream_created INTEGER;

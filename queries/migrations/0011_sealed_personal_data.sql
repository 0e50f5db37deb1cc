-- Personal data protection (--pii-key-file): an event's personal fields
-- (subject, context) are sealed under the subject's data key, and the
-- subject column holds its pseudonym. The read model keeps the sealed
-- part as the event had it (NULL for events stored in clear), so neither
-- the database nor its WAL ever holds them in clear, and erasing the key
-- redacts every row of the subject without rewriting any. A family shows
-- the personal part of its newest event (FamilyPersonal), so the rows
-- are the same however the events were batched.
ALTER TABLE audit_events ADD COLUMN pii TEXT;

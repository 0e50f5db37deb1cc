-- Personal data protection (--pii-key-file): an event's personal fields
-- (subject, context) are sealed under the subject's data key, and the
-- subject column holds its pseudonym. The read model keeps the sealed
-- part as the event had it (JSON; NULL for events stored in clear), so
-- neither the database nor its WAL ever holds them in clear, and erasing
-- the key redacts every row of the subject without rewriting any. A
-- family keeps the sealed part of its first event, with that event's id,
-- which the seal is bound to.
ALTER TABLE audit_events ADD COLUMN pii TEXT;
ALTER TABLE families ADD COLUMN pii TEXT;
ALTER TABLE families ADD COLUMN pii_event TEXT;

-- The audit trail names who presented a token and which one: presented_by
-- is the client that presented another client's token (client_mismatch,
-- or retired_key from a foreign client), '' when the owner did; and
-- presented_generation is the presented token's generation beside the
-- family's (reused, replay_detected, refresh.rejected), 0 when none was
-- presented. Events stored before they existed never named them, so the
-- defaults are what a rebuild gives their rows too.
ALTER TABLE audit_events ADD COLUMN presented_by TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN presented_generation INTEGER NOT NULL DEFAULT 0;

-- The read model of tokend, built only from the TOKENS stream. Times are
-- unix nanoseconds (UTC). It holds token hashes, never tokens.

-- How far the stream has been applied; one row, updated in the same
-- transaction as the rows it covers.
CREATE TABLE projection_position (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    applied_seq INTEGER NOT NULL
);

CREATE TABLE families (
    family_id           TEXT PRIMARY KEY,
    subject             TEXT NOT NULL,
    client_id           TEXT NOT NULL,
    scope               TEXT NOT NULL,
    audience            TEXT NOT NULL, -- JSON array
    status              TEXT NOT NULL, -- active or revoked; expiry is derived from the times
    generation          INTEGER NOT NULL,
    current_hash        TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    last_used_at        INTEGER NOT NULL,
    idle_expires_at     INTEGER NOT NULL,
    absolute_expires_at INTEGER NOT NULL,
    revoked_at          INTEGER,
    revoked_reason      TEXT NOT NULL,
    last_seq            INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX families_by_subject ON families (subject, status);
CREATE INDEX families_by_client ON families (client_id, status);

CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL,
    generation INTEGER NOT NULL,
    issued_at  INTEGER NOT NULL,
    rotated_at INTEGER
) WITHOUT ROWID;
CREATE INDEX tokens_by_family ON tokens (family_id, generation);

-- One row per stream event, keyed by its stream sequence.
CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL,
    type       TEXT NOT NULL,
    time       INTEGER NOT NULL,
    family_id  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    generation INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    context    TEXT NOT NULL -- JSON object, '{}' when none
);
CREATE INDEX audit_by_family ON audit_events (family_id, seq);
CREATE INDEX audit_by_subject ON audit_events (subject, seq);
CREATE INDEX audit_by_client ON audit_events (client_id, seq);
CREATE INDEX audit_by_type ON audit_events (type, seq);
CREATE INDEX audit_by_time ON audit_events (time);

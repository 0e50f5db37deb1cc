-- Security teams ask what a client presented of other clients' tokens
-- (AuditByPresenter). Only such refusals name a presenter, a few rows
-- among many, so the index holds just those: inserting any other row
-- does not write it. SQLite reads a partial index only for a query whose
-- WHERE it can tell implies the index's, so AuditByPresenter states the
-- condition rather than leave it to the value bound to presented_by.
CREATE INDEX audit_by_presenter ON audit_events (presented_by, seq) WHERE presented_by <> '';

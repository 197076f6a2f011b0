-- 11: why a task failed (one of receiver.failures.FailureCategory), when it went past its
-- deadline; the alerts the receiver raised and the messages they owe their targets (an outbox:
-- an alert's change and its message commit together, and a message is sent until every target
-- took it); counts kept by the second rather than row by row (refused deliveries, which
-- are not stored); and partial indexes for what the alert rules read in a window (quarantined
-- deliveries, transitions found by a poll), which cost nothing on the rows they
-- leave out.
ALTER TABLE tasks ADD COLUMN failure_category TEXT;
ALTER TABLE tasks ADD COLUMN overdue_at {real};

CREATE TABLE alerts (
    id           {id},
    rule         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    text         TEXT NOT NULL,
    advice       TEXT NOT NULL,
    link         TEXT,
    fired_at     {real} NOT NULL,
    seen_at      {real} NOT NULL,
    notified_at  {real} NOT NULL,
    repeats      INTEGER NOT NULL DEFAULT 0,
    resolved_at  {real}
);
-- one open alert per rule and subject
CREATE UNIQUE INDEX alerts_open ON alerts (rule, subject) WHERE resolved_at IS NULL;

CREATE TABLE alert_messages (
    id          {id},
    alert_id    BIGINT NOT NULL REFERENCES alerts (id),
    kind        TEXT NOT NULL,
    title       TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  {real} NOT NULL,
    sent_to     TEXT NOT NULL DEFAULT '[]',
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    done_at     {real}
);
CREATE INDEX alert_messages_due ON alert_messages (id) WHERE done_at IS NULL;

CREATE TABLE tallies (
    name    TEXT NOT NULL,
    bucket  BIGINT NOT NULL,
    label   TEXT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (name, bucket, label)
);

CREATE INDEX deliveries_quarantined ON deliveries (received_at) WHERE outcome = 'quarantined';
CREATE INDEX transitions_polled ON transitions (at, entity) WHERE source = 'poll';

-- 3: repeats of a delivery, pruned bodies, every attempt of a job, the audit log
ALTER TABLE deliveries ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN last_duplicate_at {real};
ALTER TABLE deliveries ADD COLUMN pruned_at {real};
CREATE INDEX deliveries_outcome ON deliveries (outcome, id);
CREATE INDEX tasks_first_seen ON tasks (first_seen_at);
CREATE INDEX tasks_parent ON tasks (parent_task_id);
CREATE INDEX jobs_handler ON jobs (handler, state);
CREATE INDEX jobs_finished ON jobs (state, updated_at);

-- one row per claim, numbered by run (never reset, so a requeued job keeps its
-- history); attempt is the job's counted attempt at that claim
CREATE TABLE job_attempts (
    job_id       BIGINT NOT NULL,
    run          INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    owner        TEXT NOT NULL,
    started_at   {real} NOT NULL,
    finished_at  {real},
    outcome      TEXT,
    error        TEXT,
    PRIMARY KEY (job_id, run)
);

CREATE TABLE audit (
    id      {id},
    at      {real} NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT,
    detail  TEXT NOT NULL
);

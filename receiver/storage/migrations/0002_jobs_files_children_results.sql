-- 2: jobs, and what handlers leave behind: files, child tasks, results
ALTER TABLE tasks ADD COLUMN task_type TEXT;
ALTER TABLE tasks ADD COLUMN parent_task_id TEXT;

CREATE TABLE jobs (
    id                {id},
    key               TEXT NOT NULL UNIQUE,
    handler           TEXT NOT NULL,
    route             TEXT NOT NULL,
    options           TEXT NOT NULL,
    task_id           TEXT NOT NULL,
    trigger           TEXT NOT NULL,
    delivery_id       TEXT,
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    run_after         {real} NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  {real},
    last_error        TEXT,
    created_at        {real} NOT NULL,
    updated_at        {real} NOT NULL
);
CREATE INDEX jobs_due ON jobs (state, run_after);
CREATE INDEX jobs_task ON jobs (task_id);

CREATE TABLE files (
    task_id       TEXT NOT NULL,
    clip_id       TEXT NOT NULL,
    kind          TEXT NOT NULL,
    path          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    url           TEXT,
    content_type  TEXT,
    job_key       TEXT,
    created_at    {real} NOT NULL,
    PRIMARY KEY (task_id, clip_id, kind)
);

CREATE TABLE children (
    trigger_key     TEXT PRIMARY KEY,
    parent_task_id  TEXT NOT NULL,
    root_task_id    TEXT NOT NULL,
    rule            TEXT NOT NULL,
    depth           INTEGER NOT NULL,
    task_type       TEXT NOT NULL,
    credits         INTEGER NOT NULL,
    request         TEXT NOT NULL,
    child_task_id   TEXT UNIQUE,
    state           TEXT NOT NULL,
    error           TEXT,
    created_at      {real} NOT NULL,
    updated_at      {real} NOT NULL
);
CREATE INDEX children_parent ON children (parent_task_id);
CREATE INDEX children_root ON children (root_task_id);

CREATE TABLE results (
    task_id     TEXT NOT NULL,
    clip_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL,
    job_key     TEXT,
    created_at  {real} NOT NULL,
    PRIMARY KEY (task_id, clip_id, kind)
);

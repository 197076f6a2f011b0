-- 7: a task's clips, transitions and jobs are keyed by the task's number (tasks.seq, in the
-- order tasks were first seen), not by its random id: a new task's entries go to the end of
-- each index, next to what the same commit writes. task_id stays in those tables as a plain
-- column. SQLite cannot change a key in place: the tables are built anew, the old ones dropped
-- children first, so that the old tasks table goes with nothing referring to it. (The new
-- tables repeat earlier migrations' columns: a rebuild spells its table out, and a migration
-- that has shipped is never edited.)
CREATE TABLE tasks_new (
    seq               {id},
    task_id           TEXT NOT NULL UNIQUE,
    state             TEXT NOT NULL,
    platform          TEXT,
    error             TEXT,
    first_seen_at     {real} NOT NULL,
    updated_at        {real} NOT NULL,
    last_event_at     {real} NOT NULL,
    last_delivery_id  TEXT,
    task_type         TEXT,
    parent_task_id    TEXT
);
INSERT INTO tasks_new (task_id, state, platform, error, first_seen_at, updated_at,
                       last_event_at, last_delivery_id, task_type, parent_task_id)
SELECT task_id, state, platform, error, first_seen_at, updated_at, last_event_at,
       last_delivery_id, task_type, parent_task_id
FROM tasks ORDER BY first_seen_at, task_id;

CREATE TABLE clips_new (
    task_seq    BIGINT NOT NULL REFERENCES tasks_new (seq),
    clip_id     TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    state       TEXT NOT NULL,
    title       TEXT,
    tags        TEXT,
    lyrics      TEXT,
    audio_url   TEXT,
    image_url   TEXT,
    video_url   TEXT,
    duration    {real},
    mv          TEXT,
    created_at  TEXT,
    data        TEXT NOT NULL,
    updated_at  {real} NOT NULL,
    PRIMARY KEY (task_seq, clip_id)
);
INSERT INTO clips_new (task_seq, clip_id, task_id, state, title, tags, lyrics, audio_url,
                       image_url, video_url, duration, mv, created_at, data, updated_at)
SELECT t.seq, c.clip_id, c.task_id, c.state, c.title, c.tags, c.lyrics, c.audio_url,
       c.image_url, c.video_url, c.duration, c.mv, c.created_at, c.data, c.updated_at
FROM clips c JOIN tasks_new t ON t.task_id = c.task_id ORDER BY t.seq, c.clip_id;

CREATE TABLE transitions_new (
    id           {id},
    task_seq     BIGINT NOT NULL REFERENCES tasks_new (seq),
    task_id      TEXT NOT NULL,
    entity       TEXT NOT NULL,
    entity_id    TEXT NOT NULL,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    delivery_id  TEXT NOT NULL,
    source       TEXT NOT NULL,
    at           {real} NOT NULL,
    -- states only move forward, so each state is entered at most once
    UNIQUE (task_seq, entity, entity_id, to_state)
);
INSERT INTO transitions_new (task_seq, task_id, entity, entity_id, from_state, to_state,
                             delivery_id, source, at)
SELECT t.seq, x.task_id, x.entity, x.entity_id, x.from_state, x.to_state, x.delivery_id,
       x.source, x.at
FROM transitions x JOIN tasks_new t ON t.task_id = x.task_id ORDER BY x.id;

CREATE TABLE jobs_new (
    id                {id},
    task_seq          BIGINT NOT NULL REFERENCES tasks_new (seq),
    key               TEXT NOT NULL,
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
    updated_at        {real} NOT NULL,
    -- a job's key starts with its task's id: unique per task is unique
    UNIQUE (task_seq, key)
);
-- every job has its task's row (jobs are planned after it is written); one that had not
-- would fail this step on task_seq's NOT NULL rather than be left behind
INSERT INTO jobs_new (id, task_seq, key, handler, route, options, task_id, trigger,
                      delivery_id, state, attempts, max_attempts, run_after, lease_owner,
                      lease_expires_at, last_error, created_at, updated_at)
SELECT j.id, t.seq, j.key, j.handler, j.route, j.options, j.task_id, j.trigger,
       j.delivery_id, j.state, j.attempts, j.max_attempts, j.run_after, j.lease_owner,
       j.lease_expires_at, j.last_error, j.created_at, j.updated_at
FROM jobs j LEFT JOIN tasks_new t ON t.task_id = j.task_id ORDER BY j.id;

DROP TABLE clips;
DROP TABLE transitions;
DROP TABLE jobs;
DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;
ALTER TABLE clips_new RENAME TO clips;
ALTER TABLE transitions_new RENAME TO transitions;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX tasks_state ON tasks (state, last_event_at);
CREATE INDEX tasks_first_seen ON tasks (first_seen_at);
CREATE INDEX tasks_parent ON tasks (parent_task_id) WHERE parent_task_id IS NOT NULL;
CREATE INDEX clips_clip ON clips (clip_id);
CREATE INDEX jobs_due ON jobs (state, run_after, handler);
CREATE INDEX jobs_finished ON jobs (state, updated_at) WHERE state IN ('done', 'dead');

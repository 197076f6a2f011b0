"""Every SQL statement of the SQLite store, by name, and the schema migrations.

The schema version is ``PRAGMA user_version``: migration *n* (1-based) takes the database from
version *n-1* to *n*. Append migrations; never edit one that has shipped.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: deliveries, tasks, clips, transitions
    """
    CREATE TABLE deliveries (
        id           INTEGER PRIMARY KEY,
        delivery_id  TEXT NOT NULL UNIQUE,
        source       TEXT NOT NULL,
        scheme       TEXT NOT NULL,
        event        TEXT,
        task_id      TEXT,
        outcome      TEXT NOT NULL,
        reason       TEXT,
        headers      TEXT NOT NULL,
        body         BLOB NOT NULL,
        received_at  REAL NOT NULL
    );
    CREATE INDEX deliveries_task ON deliveries (task_id);
    CREATE INDEX deliveries_received ON deliveries (received_at);

    CREATE TABLE tasks (
        task_id           TEXT PRIMARY KEY,
        state             TEXT NOT NULL,
        platform          TEXT,
        error             TEXT,
        first_seen_at     REAL NOT NULL,
        updated_at        REAL NOT NULL,
        last_event_at     REAL NOT NULL,
        last_delivery_id  TEXT
    );
    CREATE INDEX tasks_state ON tasks (state, last_event_at);

    CREATE TABLE clips (
        task_id     TEXT NOT NULL REFERENCES tasks (task_id),
        clip_id     TEXT NOT NULL,
        state       TEXT NOT NULL,
        title       TEXT,
        tags        TEXT,
        lyrics      TEXT,
        audio_url   TEXT,
        image_url   TEXT,
        video_url   TEXT,
        duration    REAL,
        mv          TEXT,
        created_at  TEXT,
        data        TEXT NOT NULL,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (task_id, clip_id)
    );
    CREATE INDEX clips_clip ON clips (clip_id);

    CREATE TABLE transitions (
        id           INTEGER PRIMARY KEY,
        task_id      TEXT NOT NULL REFERENCES tasks (task_id),
        entity       TEXT NOT NULL,
        entity_id    TEXT NOT NULL,
        from_state   TEXT,
        to_state     TEXT NOT NULL,
        delivery_id  TEXT NOT NULL,
        source       TEXT NOT NULL,
        at           REAL NOT NULL,
        -- states only move forward, so each state is entered at most once
        UNIQUE (task_id, entity, entity_id, to_state)
    );
    CREATE INDEX transitions_task ON transitions (task_id, id);

    CREATE TABLE probes (name TEXT PRIMARY KEY, at REAL NOT NULL);
    """,
    # 2: jobs, and what handlers leave behind: files, child tasks, results
    """
    ALTER TABLE tasks ADD COLUMN task_type TEXT;
    ALTER TABLE tasks ADD COLUMN parent_task_id TEXT;

    CREATE TABLE jobs (
        id                INTEGER PRIMARY KEY,
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
        run_after         REAL NOT NULL,
        lease_owner       TEXT,
        lease_expires_at  REAL,
        last_error        TEXT,
        created_at        REAL NOT NULL,
        updated_at        REAL NOT NULL
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
        created_at    REAL NOT NULL,
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
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL
    );
    CREATE INDEX children_parent ON children (parent_task_id);
    CREATE INDEX children_root ON children (root_task_id);

    CREATE TABLE results (
        task_id     TEXT NOT NULL,
        clip_id     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        data        TEXT NOT NULL,
        job_key     TEXT,
        created_at  REAL NOT NULL,
        PRIMARY KEY (task_id, clip_id, kind)
    );
    """,
)

FIND_DELIVERY = """
SELECT delivery_id, source, scheme, event, task_id, outcome, reason, received_at
FROM deliveries WHERE delivery_id = ?
"""
INSERT_DELIVERY = """
INSERT INTO deliveries
    (delivery_id, source, scheme, event, task_id, outcome, reason, headers, body, received_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
TASK_FOR_CLIPS = "SELECT task_id FROM clips WHERE clip_id IN ({marks}) LIMIT 1"
TASK_STATE = "SELECT state FROM tasks WHERE task_id = ?"
CLIP_STATES = "SELECT clip_id, state FROM clips WHERE task_id = ?"
UPSERT_TASK = """
INSERT INTO tasks (task_id, state, platform, error, first_seen_at, updated_at, last_event_at,
                   last_delivery_id)
VALUES (:task_id, :state, :platform, :error, :at, :at, :at, :delivery_id)
ON CONFLICT (task_id) DO UPDATE SET
    updated_at = CASE WHEN tasks.state = excluded.state THEN tasks.updated_at
                      ELSE excluded.updated_at END,
    state = excluded.state,
    platform = COALESCE(excluded.platform, tasks.platform),
    error = COALESCE(excluded.error, tasks.error),
    last_event_at = MAX(tasks.last_event_at, excluded.last_event_at),
    last_delivery_id = excluded.last_delivery_id
"""
UPSERT_CLIP = """
INSERT INTO clips (task_id, clip_id, state, title, tags, lyrics, audio_url, image_url,
                   video_url, duration, mv, created_at, data, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (task_id, clip_id) DO UPDATE SET
    state = excluded.state,
    title = COALESCE(excluded.title, clips.title),
    tags = COALESCE(excluded.tags, clips.tags),
    lyrics = COALESCE(excluded.lyrics, clips.lyrics),
    audio_url = COALESCE(excluded.audio_url, clips.audio_url),
    image_url = COALESCE(excluded.image_url, clips.image_url),
    video_url = COALESCE(excluded.video_url, clips.video_url),
    duration = COALESCE(excluded.duration, clips.duration),
    mv = COALESCE(excluded.mv, clips.mv),
    created_at = COALESCE(excluded.created_at, clips.created_at),
    data = excluded.data,
    updated_at = excluded.updated_at
"""
INSERT_TRANSITION = """
INSERT INTO transitions (task_id, entity, entity_id, from_state, to_state, delivery_id, source, at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
GET_TASK = """
SELECT task_id, state, platform, error, first_seen_at, updated_at, last_event_at,
       last_delivery_id, task_type, parent_task_id
FROM tasks WHERE task_id = ?
"""
GET_CLIPS = """
SELECT task_id, clip_id, state, title, tags, lyrics, audio_url, image_url, video_url, duration,
       mv, created_at, updated_at, data
FROM clips WHERE task_id = ? ORDER BY created_at, clip_id
"""
GET_TRANSITIONS = """
SELECT task_id, entity, entity_id, from_state, to_state, delivery_id, source, at
FROM transitions WHERE task_id = ? ORDER BY id
"""
PROBE_WRITE = """
INSERT INTO probes (name, at) VALUES ('ready', ?)
ON CONFLICT (name) DO UPDATE SET at = excluded.at
"""
COUNT = {
    "deliveries": "SELECT COUNT(*) FROM deliveries",
    "tasks": "SELECT COUNT(*) FROM tasks",
    "clips": "SELECT COUNT(*) FROM clips",
    "transitions": "SELECT COUNT(*) FROM transitions",
    "jobs": "SELECT COUNT(*) FROM jobs",
    "files": "SELECT COUNT(*) FROM files",
    "children": "SELECT COUNT(*) FROM children",
}

# ---- routing facts and jobs ------------------------------------------------------------------

TASK_FACTS = "SELECT task_type, platform FROM tasks WHERE task_id = ?"
CLIP_TAGS = "SELECT tags FROM clips WHERE task_id = ?"
INSERT_JOB = """
INSERT INTO jobs (key, handler, route, options, task_id, trigger, delivery_id, state,
                  max_attempts, run_after, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)
ON CONFLICT (key) DO NOTHING
"""
JOB_COLUMNS = """id, key, handler, route, options, task_id, trigger, delivery_id, state, attempts,
max_attempts, run_after, lease_owner, lease_expires_at, last_error, created_at, updated_at"""
# Due jobs, and running ones whose lease ran out (their worker died), oldest due first.
CLAIM_JOBS = f"""
UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = :owner,
                lease_expires_at = :until, updated_at = :now
WHERE id IN (
    SELECT id FROM jobs
    WHERE (state IN ('queued', 'retrying') AND run_after <= :now)
       OR (state = 'running' AND lease_expires_at <= :now)
    ORDER BY run_after, id LIMIT :limit
)
RETURNING {JOB_COLUMNS}
"""
RENEW_LEASE = """
UPDATE jobs SET lease_expires_at = :until, updated_at = :now
WHERE id = :id AND state = 'running' AND lease_owner = :owner
"""
FINISH_JOB = """
UPDATE jobs SET state = 'done', lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND state = 'running' AND lease_owner = :owner
"""
RETRY_JOB = """
UPDATE jobs SET state = 'retrying', lease_owner = NULL, lease_expires_at = NULL,
                last_error = :error, run_after = :run_after, updated_at = :now,
                attempts = attempts - :refund
WHERE id = :id AND state = 'running' AND lease_owner = :owner
"""
KILL_JOB = """
UPDATE jobs SET state = 'dead', lease_owner = NULL, lease_expires_at = NULL,
                last_error = :error, updated_at = :now
WHERE id = :id AND state = 'running' AND lease_owner = :owner
"""
# A graceful stop hands running jobs back without charging the attempt.
RELEASE_JOBS = """
UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                attempts = MAX(attempts - 1, 0), run_after = :now, updated_at = :now
WHERE state = 'running' AND lease_owner = :owner
"""
NEXT_DUE = """
SELECT MIN(CASE WHEN state = 'running' THEN lease_expires_at ELSE run_after END) FROM jobs
WHERE state IN ('queued', 'retrying', 'running')
"""
LIST_JOBS = f"SELECT {JOB_COLUMNS} FROM jobs WHERE {{where}} ORDER BY id LIMIT ?"
REQUEUE_JOBS = """
UPDATE jobs SET state = 'queued', attempts = 0, run_after = ?, last_error = NULL, updated_at = ?
WHERE id IN ({marks}) AND state IN ('dead', 'done')
"""

# ---- what handlers leave behind --------------------------------------------------------------

UPSERT_FILE = """
INSERT INTO files (task_id, clip_id, kind, path, size, sha256, url, content_type, job_key,
                   created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (task_id, clip_id, kind) DO UPDATE SET
    path = excluded.path, size = excluded.size, sha256 = excluded.sha256, url = excluded.url,
    content_type = excluded.content_type, job_key = excluded.job_key
"""
LIST_FILES = """
SELECT task_id, clip_id, kind, path, size, sha256, url, content_type, job_key, created_at
FROM files WHERE task_id = ? ORDER BY clip_id, kind
"""
UPSERT_RESULT = """
INSERT INTO results (task_id, clip_id, kind, data, job_key, created_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (task_id, clip_id, kind) DO UPDATE SET data = excluded.data,
    job_key = excluded.job_key
"""
LIST_RESULTS = """
SELECT task_id, clip_id, kind, data, job_key, created_at FROM results
WHERE task_id = ? ORDER BY clip_id, kind
"""
CHILD_COLUMNS = """trigger_key, parent_task_id, root_task_id, rule, depth, task_type, credits,
request, child_task_id, state, error, created_at, updated_at"""
INSERT_CHILD = """
INSERT INTO children (trigger_key, parent_task_id, root_task_id, rule, depth, task_type, credits,
                      request, child_task_id, state, error, created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (trigger_key) DO NOTHING
"""
GET_CHILD = f"SELECT {CHILD_COLUMNS} FROM children WHERE trigger_key = ?"
CHILD_BY_TASK = f"SELECT {CHILD_COLUMNS} FROM children WHERE child_task_id = ?"
LIST_CHILDREN = f"""
SELECT {CHILD_COLUMNS} FROM children WHERE parent_task_id = ? ORDER BY created_at, trigger_key
"""
UPDATE_CHILD = """
UPDATE children SET state = ?, child_task_id = COALESCE(?, child_task_id), error = ?,
                    updated_at = ?
WHERE trigger_key = ?
"""
CREDITS_UNDER_ROOT = """
SELECT COALESCE(SUM(credits), 0) FROM children WHERE root_task_id = ? AND state != 'failed'
"""
REGISTER_TASK = """
INSERT INTO tasks (task_id, state, first_seen_at, updated_at, last_event_at, task_type,
                   parent_task_id)
VALUES (:task_id, 'pending', :at, :at, :at, :task_type, :parent)
ON CONFLICT (task_id) DO UPDATE SET
    task_type = COALESCE(tasks.task_type, excluded.task_type),
    parent_task_id = COALESCE(tasks.parent_task_id, excluded.parent_task_id)
"""
TASK_TRANSITIONS = """
SELECT task_id, entity, entity_id, from_state, to_state, delivery_id, source, at
FROM transitions WHERE task_id = ? AND entity = 'task' ORDER BY id
"""

# ---- replay ----------------------------------------------------------------------------------

STALE_TASKS = """
SELECT task_id FROM tasks
WHERE state IN ('pending', 'running') AND last_event_at < ?
ORDER BY last_event_at LIMIT ?
"""
TASKS_SINCE = "SELECT task_id FROM tasks WHERE first_seen_at >= ? ORDER BY first_seen_at LIMIT ?"
RAW_DELIVERIES = """
SELECT delivery_id, source, scheme, event, task_id, outcome, reason, received_at, headers, body
FROM deliveries WHERE {where} ORDER BY id LIMIT ?
"""
DELETE_QUARANTINED = "DELETE FROM deliveries WHERE delivery_id = ? AND outcome = 'quarantined'"

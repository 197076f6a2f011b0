"""Every SQL statement of the store, by name, written once in a portable subset of SQL, and the
schema migrations, written once with a few type placeholders.

The storage logic (:mod:`receiver.storage.store`, :mod:`receiver.storage.recording_tx`) names
statements with :class:`Q`; a backend compiles them into its dialect
(:func:`receiver.storage.connector.compile_statements`) and may override the few that cannot be
portable (:data:`Dialect.overrides`), and expands three macros its way: ``JSON_TEXTS(:p)`` and
``JSON_INTS(:p)`` (the elements of a JSON array bound as one parameter, for ``IN``) and
``FOR_CLAIM()`` (``FOR UPDATE SKIP LOCKED`` where rows can be locked).

Portable means: ``:name`` parameters bound from a mapping; ``CAST(:x AS DOUBLE PRECISION)``
(SQLite gives it REAL affinity) where a NULL parameter needs a type; ``CASE`` instead of the
scalar ``MAX(a, b)`` (PostgreSQL's is ``GREATEST``); no ``::`` casts and no literal ``%``.

Migration *n* (1-based) takes the schema from version *n-1* to *n*. Append migrations; never
edit one that has shipped. Placeholders: ``{id}`` an auto-increment primary key, ``{real}`` a
double, ``{blob}`` bytes, ``{sqlite_only_6}`` the statements of migration 6 that only SQLite
runs (:data:`SQLITE_ONLY_6`), ``{postgres_only_7}`` those of migration 7 that only PostgreSQL
runs (:data:`POSTGRES_ONLY_7`).
"""

from __future__ import annotations

from enum import StrEnum

MIGRATIONS: tuple[str, ...] = (
    # 1: deliveries, tasks, clips, transitions
    """
    CREATE TABLE deliveries (
        id           {id},
        delivery_id  TEXT NOT NULL UNIQUE,
        source       TEXT NOT NULL,
        scheme       TEXT NOT NULL,
        event        TEXT,
        task_id      TEXT,
        outcome      TEXT NOT NULL,
        reason       TEXT,
        headers      TEXT NOT NULL,
        body         {blob} NOT NULL,
        received_at  {real} NOT NULL
    );
    CREATE INDEX deliveries_task ON deliveries (task_id);
    CREATE INDEX deliveries_received ON deliveries (received_at);

    CREATE TABLE tasks (
        task_id           TEXT PRIMARY KEY,
        state             TEXT NOT NULL,
        platform          TEXT,
        error             TEXT,
        first_seen_at     {real} NOT NULL,
        updated_at        {real} NOT NULL,
        last_event_at     {real} NOT NULL,
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
        duration    {real},
        mv          TEXT,
        created_at  TEXT,
        data        TEXT NOT NULL,
        updated_at  {real} NOT NULL,
        PRIMARY KEY (task_id, clip_id)
    );
    CREATE INDEX clips_clip ON clips (clip_id);

    CREATE TABLE transitions (
        id           {id},
        task_id      TEXT NOT NULL REFERENCES tasks (task_id),
        entity       TEXT NOT NULL,
        entity_id    TEXT NOT NULL,
        from_state   TEXT,
        to_state     TEXT NOT NULL,
        delivery_id  TEXT NOT NULL,
        source       TEXT NOT NULL,
        at           {real} NOT NULL,
        -- states only move forward, so each state is entered at most once
        UNIQUE (task_id, entity, entity_id, to_state)
    );
    CREATE INDEX transitions_task ON transitions (task_id, id);

    CREATE TABLE probes (name TEXT PRIMARY KEY, at {real} NOT NULL);
    """,
    # 2: jobs, and what handlers leave behind: files, child tasks, results
    """
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
    """,
    # 3: repeats of a delivery, pruned bodies, every attempt of a job, the audit log
    """
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
    """,
    # 4: the console: what a delivery did, and pages of deliveries by kind of event
    """
    CREATE INDEX transitions_delivery ON transitions (delivery_id);
    CREATE INDEX deliveries_event ON deliveries (event, id);
    CREATE INDEX jobs_created ON jobs (created_at);
    """,
    # 5: turns: what one process among several does on a schedule (reconcile, prune)
    """
    CREATE TABLE turns (
        name   TEXT PRIMARY KEY,
        owner  TEXT NOT NULL,
        until  {real} NOT NULL
    );
    """,
    # 6: fewer index pages written per delivery. Every commit writes each page it touched
    # whole to the WAL (and a checkpoint again to the file), and an insert touches a leaf of
    # every index of its table: each index dropped here cost about 1.3 to 3 pages (KiB) a
    # delivery committed alone. What reads used instead (EXPLAIN QUERY PLAN, SQLite):
    # - transitions_task: a task's transitions (GET_TRANSITIONS, TASK_TRANSITIONS) use the
    #   UNIQUE (task_id, entity, entity_id, to_state) and sort the task's few rows by id;
    # - transitions_delivery: DELIVERY_TRANSITIONS looks in the delivery's task (task_id,
    #   the same UNIQUE index): a delivery's transitions are all of the task it recorded;
    # - tasks_parent: only child tasks have a parent; an equality on it still uses the index;
    # - jobs_finished: only pruning ranges over finished jobs' updated_at; queued and running
    #   jobs are found by jobs_due (state, run_after), which claims already used;
    # - jobs_handler (handler, state): jobs_due gains the handler, (state, run_after,
    #   handler): the pending downloads are found by state there, the counts by state and
    #   handler read it alone, and a job changes state in one index fewer;
    # - deliveries_outcome: pruning finds recorded deliveries by received_at
    #   (deliveries_received); the index keeps the rare outcomes (quarantined) a list shows.
    """
    DROP INDEX transitions_task;
    DROP INDEX transitions_delivery;
    DROP INDEX tasks_parent;
    CREATE INDEX tasks_parent ON tasks (parent_task_id) WHERE parent_task_id IS NOT NULL;
    DROP INDEX jobs_finished;
    CREATE INDEX jobs_finished ON jobs (state, updated_at) WHERE state IN ('done', 'dead');
    DROP INDEX jobs_handler;
    DROP INDEX jobs_due;
    CREATE INDEX jobs_due ON jobs (state, run_after, handler);
    DROP INDEX deliveries_outcome;
    CREATE INDEX deliveries_outcome ON deliveries (outcome, id) WHERE outcome <> 'recorded';
    {sqlite_only_6}
    """,
    # 7: a task's clips, transitions and jobs are keyed by the task's number (tasks.seq, in
    # the order tasks were first seen), not by its id. Task ids are random (UUIDs), so every
    # index that led with task_id took each new task's entries at a random leaf: a page each
    # written to the WAL and again at checkpoint, and a leaf split every few inserts. Led by
    # the number, a new task's entries go to the end of the index, next to the ones the same
    # commit writes. Measured on the store alone (20,000 tasks, 2,000 more, 8 callers), the
    # (task_id, clip_id) and (task_id, entity, entity_id, to_state) keys were 7.7 of the 24.9
    # pages a delivery wrote to the WAL, and jobs' key (which starts with the task's id) 2.2
    # more. task_id stays in those tables, as a plain column.
    # The tables are built anew (SQLite cannot change a key in place), and the old ones
    # dropped children first, so that the old tasks table goes with nothing referring to it.
    # (The new tables repeat migrations 1-3's columns: a rebuild spells its table out, and a
    # migration that has shipped is never edited.)
    """
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
    {postgres_only_7}
    """,
)

# PostgreSQL's own part of migration 7 (``{postgres_only_7}``; nothing on SQLite): the two
# indexes of jobs that migration 6 kept there only, and the jobs' id sequence moved past the
# ids the new table was given (SQLite's next rowid is already one past the largest).
POSTGRES_ONLY_7 = """
    CREATE INDEX jobs_task ON jobs (task_id);
    CREATE INDEX jobs_created ON jobs (created_at);
    SELECT setval(pg_get_serial_sequence('jobs', 'id'),
                  COALESCE((SELECT MAX(id) FROM jobs), 0) + 1, false);
"""

# SQLite's own part of migration 6 (``{sqlite_only_6}``; nothing on PostgreSQL). These indexes
# serve only the console's optional filters, ``(:x IS NULL OR column = :x)``: PostgreSQL plans
# them with the value bound and uses the index; SQLite plans a statement once for any value and
# never does (it pages newest first by id instead), so on SQLite they were written on every
# delivery and read by nothing. (A console that builds its WHERE per filter on SQLite would
# want deliveries_task and jobs_task back, in a new migration.)
SQLITE_ONLY_6 = """
    DROP INDEX deliveries_event;
    DROP INDEX deliveries_task;
    DROP INDEX jobs_task;
    DROP INDEX jobs_created;
"""


class Q(StrEnum):
    """The names of the store's statements. Every backend compiles all of them."""

    # -- recording
    FIND_DELIVERY = "find_delivery"
    COUNT_DUPLICATE = "count_duplicate"
    INSERT_DELIVERY = "insert_delivery"
    DELETE_QUARANTINED = "delete_quarantined"
    TASK_FOR_CLIPS = "task_for_clips"
    LOCK_TASK = "lock_task"
    TASK_STATE = "task_state"
    TASK_BEFORE = "task_before"
    UPSERT_TASK = "upsert_task"
    UPSERT_CLIP = "upsert_clip"
    INSERT_TRANSITION = "insert_transition"
    TASK_FACTS = "task_facts"
    INSERT_JOB = "insert_job"
    REGISTER_TASK = "register_task"
    TASK_TRANSITIONS = "task_transitions"
    # -- reading a task
    GET_TASK = "get_task"
    GET_CLIPS = "get_clips"
    GET_TRANSITIONS = "get_transitions"
    PROBE_WRITE = "probe_write"
    # -- jobs
    CLAIM_JOBS = "claim_jobs"
    START_ATTEMPT = "start_attempt"
    END_ATTEMPT = "end_attempt"
    RENEW_LEASE = "renew_lease"
    FINISH_JOBS = "finish_jobs"
    RETRY_JOB = "retry_job"
    KILL_JOB = "kill_job"
    RELEASE_JOBS = "release_jobs"
    NEXT_DUE = "next_due"
    FIND_JOBS = "find_jobs"
    FIND_JOBS_OF_DELIVERIES = "find_jobs_of_deliveries"
    REQUEUE_JOBS = "requeue_jobs"
    # -- what handlers leave behind
    UPSERT_FILE = "upsert_file"
    LIST_FILES = "list_files"
    UPSERT_RESULT = "upsert_result"
    LIST_RESULTS = "list_results"
    INSERT_CHILD = "insert_child"
    GET_CHILD = "get_child"
    CHILD_BY_TASK = "child_by_task"
    LIST_CHILDREN = "list_children"
    UPDATE_CHILD = "update_child"
    CREDITS_UNDER_ROOT = "credits_under_root"
    # -- replay and administration
    STALE_TASKS = "stale_tasks"
    TASKS_SINCE = "tasks_since"
    RAW_DELIVERIES = "raw_deliveries"
    INSERT_AUDIT = "insert_audit"
    TAKE_TURN = "take_turn"
    DUPLICATES_OF = "duplicates_of"
    JOB_ATTEMPTS = "job_attempts"
    # -- retention
    PRUNE_BODIES = "prune_bodies"
    COUNT_PRUNABLE_BODIES = "count_prunable_bodies"
    PRUNE_ATTEMPTS = "prune_attempts"
    PRUNE_JOBS = "prune_jobs"
    COUNT_PRUNABLE_JOBS = "count_prunable_jobs"
    PRUNE_IDS = "prune_ids"
    COUNT_PRUNABLE_IDS = "count_prunable_ids"
    # -- operations
    COUNT_DELIVERIES = "count_deliveries"
    COUNT_TASKS = "count_tasks"
    COUNT_CLIPS = "count_clips"
    COUNT_TRANSITIONS = "count_transitions"
    COUNT_JOBS = "count_jobs"
    COUNT_FILES = "count_files"
    COUNT_CHILDREN = "count_children"
    # -- the console (receiver.storage.admin): pages newest first, with keyset cursors
    LIST_TASKS = "list_tasks"
    LIST_DELIVERIES = "list_deliveries"
    GET_DELIVERY = "get_delivery"
    DELIVERY_TRANSITIONS = "delivery_transitions"
    LIST_JOBS_PAGE = "list_jobs_page"
    GET_JOB = "get_job"
    COUNT_MATCHING_JOBS = "count_matching_jobs"
    REQUEUE_MATCHING = "requeue_matching"
    LIST_AUDIT = "list_audit"
    DELIVERIES_PER_MINUTE = "deliveries_per_minute"
    DELIVERIES_BY_OUTCOME = "deliveries_by_outcome"
    TASKS_BY_STATE = "tasks_by_state"
    JOBS_BY_STATE_HANDLER = "jobs_by_state_handler"
    OLDEST_QUEUED = "oldest_queued"
    PENDING_DOWNLOADS = "pending_downloads"
    TRANSITIONS_BY_STATE = "transitions_by_state"
    BYTES_KEPT = "bytes_kept"
    RECOVERIES = "recoveries"


TABLES = ("deliveries", "tasks", "clips", "transitions", "jobs", "files", "children")
COUNTS = {
    "deliveries": Q.COUNT_DELIVERIES, "tasks": Q.COUNT_TASKS, "clips": Q.COUNT_CLIPS,
    "transitions": Q.COUNT_TRANSITIONS, "jobs": Q.COUNT_JOBS, "files": Q.COUNT_FILES,
    "children": Q.COUNT_CHILDREN,
}

DELIVERY_COLUMNS = "delivery_id, source, scheme, event, task_id, outcome, reason, received_at"
TASK_COLUMNS = """task_id, state, platform, error, first_seen_at, updated_at, last_event_at,
last_delivery_id, task_type, parent_task_id"""
CLIP_COLUMNS = """task_id, clip_id, state, title, tags, lyrics, audio_url, image_url, video_url,
duration, mv, created_at, updated_at, data"""
TRANSITION_COLUMNS = "task_id, entity, entity_id, from_state, to_state, delivery_id, source, at"
JOB_COLUMNS = """id, key, handler, route, options, task_id, trigger, delivery_id, state, attempts,
max_attempts, run_after, lease_owner, lease_expires_at, last_error, created_at, updated_at"""
CHILD_COLUMNS = """trigger_key, parent_task_id, root_task_id, rule, depth, task_type, credits,
request, child_task_id, state, error, created_at, updated_at"""
FILE_COLUMNS = "task_id, clip_id, kind, path, size, sha256, url, content_type, job_key, created_at"

# A filter parameter that may be NULL ("any"): typed, so that PostgreSQL can bind a NULL.
_TEXT = "CAST(:{0} AS TEXT)"
_TIME = "CAST(:{0} AS DOUBLE PRECISION)"


def _any(column: str, param: str, cast: str = _TEXT, op: str = "=") -> str:
    return f"({cast.format(param)} IS NULL OR {column} {op} :{param})"


# A task's number (tasks.seq), which its clips, transitions and jobs are keyed by (migration 7).
_TASK_SEQ = "(SELECT seq FROM tasks WHERE task_id = :task_id)"

_JOB_FILTER = " AND ".join((
    _any("state", "state"), _any("handler", "handler"), _any("task_id", "task_id"),
    _any("created_at", "since", _TIME, ">="), _any("created_at", "until", _TIME, "<"),
))

PORTABLE: dict[Q, str] = {
    Q.FIND_DELIVERY: f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE delivery_id = :delivery_id",
    Q.COUNT_DUPLICATE: """
        UPDATE deliveries SET duplicates = duplicates + 1, last_duplicate_at = :at
        WHERE delivery_id = :delivery_id
    """,
    Q.INSERT_DELIVERY: """
        INSERT INTO deliveries (delivery_id, source, scheme, event, task_id, outcome, reason,
                                headers, body, received_at)
        VALUES (:delivery_id, :source, :scheme, :event, :task_id, :outcome, :reason, :headers,
                :body, :received_at)
        ON CONFLICT (delivery_id) DO NOTHING
    """,
    Q.DELETE_QUARANTINED: """
        DELETE FROM deliveries WHERE delivery_id = :delivery_id AND outcome = 'quarantined'
    """,
    # :clip_ids is a JSON array, expanded by the dialect's JSON_TEXTS
    Q.TASK_FOR_CLIPS: """
        SELECT task_id FROM clips WHERE clip_id IN (JSON_TEXTS(:clip_ids)) LIMIT 1
    """,
    # Recording a task holds it until commit, so that what it reads of the task is the latest
    # (see Transaction.lock_task). Empty: nothing to run, for SQLite, whose BEGIN IMMEDIATE
    # already runs one writer at a time; PostgreSQL overrides it.
    Q.LOCK_TASK: "",
    Q.TASK_STATE: "SELECT state FROM tasks WHERE task_id = :task_id",
    # the task's row (clip_id NULL) and its clips' rows, in one trip
    Q.TASK_BEFORE: f"""
        SELECT NULL AS clip_id, state FROM tasks WHERE task_id = :task_id
        UNION ALL
        SELECT clip_id, state FROM clips WHERE task_seq = {_TASK_SEQ}
    """,
    Q.UPSERT_TASK: """
        INSERT INTO tasks (task_id, state, platform, error, first_seen_at, updated_at,
                           last_event_at, last_delivery_id)
        VALUES (:task_id, :state, :platform, :error, :at, :at, :at, :delivery_id)
        ON CONFLICT (task_id) DO UPDATE SET
            updated_at = CASE WHEN tasks.state = excluded.state THEN tasks.updated_at
                              ELSE excluded.updated_at END,
            state = excluded.state,
            platform = COALESCE(excluded.platform, tasks.platform),
            error = COALESCE(excluded.error, tasks.error),
            last_event_at = CASE WHEN tasks.last_event_at > excluded.last_event_at
                                 THEN tasks.last_event_at ELSE excluded.last_event_at END,
            last_delivery_id = excluded.last_delivery_id
    """,
    Q.UPSERT_CLIP: f"""
        INSERT INTO clips (task_seq, task_id, clip_id, state, title, tags, lyrics, audio_url,
                           image_url, video_url, duration, mv, created_at, data, updated_at)
        VALUES ({_TASK_SEQ}, :task_id, :clip_id, :state, :title, :tags, :lyrics, :audio_url,
                :image_url, :video_url, :duration, :mv, :created_at, :data, :at)
        ON CONFLICT (task_seq, clip_id) DO UPDATE SET
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
    """,
    Q.INSERT_TRANSITION: f"""
        INSERT INTO transitions (task_seq, task_id, entity, entity_id, from_state, to_state,
                                 delivery_id, source, at)
        VALUES ({_TASK_SEQ}, :task_id, :entity, :entity_id, :from_state, :to_state,
                :delivery_id, :source, :at)
    """,
    # the task's type and platform (the row whose kind is 'task'), then its clips' tags
    Q.TASK_FACTS: f"""
        SELECT 'task' AS kind, task_type, platform FROM tasks WHERE task_id = :task_id
        UNION ALL
        SELECT 'clip', tags, NULL FROM clips WHERE task_seq = {_TASK_SEQ}
    """,
    Q.INSERT_JOB: f"""
        INSERT INTO jobs (task_seq, key, handler, route, options, task_id, trigger,
                          delivery_id, state, max_attempts, run_after, created_at, updated_at)
        VALUES ({_TASK_SEQ}, :key, :handler, :route, :options, :task_id, :trigger,
                :delivery_id, 'queued', :max_attempts, :at, :at, :at)
        ON CONFLICT (task_seq, key) DO NOTHING
    """,
    Q.REGISTER_TASK: """
        INSERT INTO tasks (task_id, state, first_seen_at, updated_at, last_event_at, task_type,
                           parent_task_id)
        VALUES (:task_id, 'pending', :at, :at, :at, :task_type, :parent)
        ON CONFLICT (task_id) DO UPDATE SET
            task_type = COALESCE(tasks.task_type, excluded.task_type),
            parent_task_id = COALESCE(tasks.parent_task_id, excluded.parent_task_id)
    """,
    Q.TASK_TRANSITIONS: f"""
        SELECT {TRANSITION_COLUMNS} FROM transitions
        WHERE task_seq = {_TASK_SEQ} AND entity = 'task' ORDER BY id
    """,
    Q.GET_TASK: f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = :task_id",
    Q.GET_CLIPS: f"""
        SELECT {CLIP_COLUMNS} FROM clips WHERE task_seq = {_TASK_SEQ}
        ORDER BY created_at, clip_id
    """,
    Q.GET_TRANSITIONS: f"""
        SELECT {TRANSITION_COLUMNS} FROM transitions WHERE task_seq = {_TASK_SEQ} ORDER BY id
    """,
    Q.PROBE_WRITE: """
        INSERT INTO probes (name, at) VALUES (:name, :at)
        ON CONFLICT (name) DO UPDATE SET at = excluded.at
    """,
    # Due jobs, and running ones whose lease ran out (their worker died), oldest due first.
    # Each kind is read in index order (jobs_due) up to :window rows, and only those are
    # sorted: one ORDER BY over the OR of the three read every due job and sorted them all, on
    # every claim (SQLite, a claim of 16 inside the writer's batch: 4.6 ms with 10,000 due,
    # 30 ms with 50,000; now 0.4 ms). The top :limit of the three tops is the top :limit of
    # all. The rule is checked again on the locked rows: on PostgreSQL a row claimed by
    # another worker since this one's snapshot no longer passes it; written as one CASE so
    # that SQLite's planner takes the candidates' ids rather than an index scan of the OR.
    # On PostgreSQL, concurrent claims skip each other's locked rows within :window.
    Q.CLAIM_JOBS: f"""
        UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = :owner,
                        lease_expires_at = :until, updated_at = :now
        WHERE id IN (
            SELECT id FROM jobs
            WHERE id IN (
                SELECT id FROM (
                    SELECT id FROM jobs WHERE state = 'queued' AND run_after <= :now
                    ORDER BY run_after, id LIMIT :window) AS due_queued
                UNION ALL
                SELECT id FROM (
                    SELECT id FROM jobs WHERE state = 'retrying' AND run_after <= :now
                    ORDER BY run_after, id LIMIT :window) AS due_retrying
                UNION ALL
                SELECT id FROM (
                    SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at <= :now
                    ORDER BY run_after, id LIMIT :window) AS lease_expired
            )
            AND CASE WHEN state IN ('queued', 'retrying') THEN run_after <= :now
                     WHEN state = 'running' THEN lease_expires_at <= :now
                     ELSE FALSE END
            ORDER BY run_after, id LIMIT :limit FOR_CLAIM()
        )
        RETURNING {JOB_COLUMNS}
    """,
    # Every claim is a row of its own: a lost lease leaves its row unfinished (the worker
    # died), a postponed or released run keeps its outcome, a requeue keeps the history.
    Q.START_ATTEMPT: """
        INSERT INTO job_attempts (job_id, run, attempt, owner, started_at)
        SELECT :job_id, COALESCE(MAX(run), 0) + 1, :attempt, :owner, :now
        FROM job_attempts WHERE job_id = :job_id
    """,
    Q.END_ATTEMPT: """
        UPDATE job_attempts SET finished_at = :now, outcome = :outcome, error = :error
        WHERE job_id = :job_id AND owner = :owner AND finished_at IS NULL
    """,
    Q.RENEW_LEASE: """
        UPDATE jobs SET lease_expires_at = :until, updated_at = :now
        WHERE id = :id AND state = 'running' AND lease_owner = :owner
    """,
    # :ids is a JSON array of job ids; the ones still leased to :owner are finished, returned
    Q.FINISH_JOBS: """
        UPDATE jobs SET state = 'done', lease_owner = NULL, lease_expires_at = NULL,
                        updated_at = :now
        WHERE id IN (JSON_INTS(:ids)) AND state = 'running' AND lease_owner = :owner
        RETURNING id
    """,
    Q.RETRY_JOB: """
        UPDATE jobs SET state = 'retrying', lease_owner = NULL, lease_expires_at = NULL,
                        last_error = :error, run_after = :run_after, updated_at = :now,
                        attempts = attempts - :refund
        WHERE id = :id AND state = 'running' AND lease_owner = :owner
    """,
    Q.KILL_JOB: """
        UPDATE jobs SET state = 'dead', lease_owner = NULL, lease_expires_at = NULL,
                        last_error = :error, updated_at = :now
        WHERE id = :id AND state = 'running' AND lease_owner = :owner
    """,
    # A graceful stop hands running jobs back without charging the attempt.
    Q.RELEASE_JOBS: """
        UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                        attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,
                        run_after = :now, updated_at = :now
        WHERE state = 'running' AND lease_owner = :owner
        RETURNING id
    """,
    Q.NEXT_DUE: """
        SELECT MIN(CASE WHEN state = 'running' THEN lease_expires_at ELSE run_after END)
        FROM jobs WHERE state IN ('queued', 'retrying', 'running')
    """,
    Q.FIND_JOBS: f"""
        SELECT {JOB_COLUMNS} FROM jobs WHERE {_JOB_FILTER} ORDER BY id LIMIT :limit
    """,
    # :delivery_ids is a JSON array
    Q.FIND_JOBS_OF_DELIVERIES: f"""
        SELECT {JOB_COLUMNS} FROM jobs
        WHERE {_JOB_FILTER} AND delivery_id IN (JSON_TEXTS(:delivery_ids))
        ORDER BY id LIMIT :limit
    """,
    # :ids is a JSON array of job ids
    Q.REQUEUE_JOBS: """
        UPDATE jobs SET state = 'queued', attempts = 0, run_after = :now, last_error = NULL,
                        updated_at = :now
        WHERE id IN (JSON_INTS(:ids)) AND state IN ('dead', 'done')
    """,
    Q.UPSERT_FILE: """
        INSERT INTO files (task_id, clip_id, kind, path, size, sha256, url, content_type,
                           job_key, created_at)
        VALUES (:task_id, :clip_id, :kind, :path, :size, :sha256, :url, :content_type,
                :job_key, :created_at)
        ON CONFLICT (task_id, clip_id, kind) DO UPDATE SET
            path = excluded.path, size = excluded.size, sha256 = excluded.sha256,
            url = excluded.url, content_type = excluded.content_type, job_key = excluded.job_key
    """,
    Q.LIST_FILES: f"""
        SELECT {FILE_COLUMNS} FROM files WHERE task_id = :task_id ORDER BY clip_id, kind
    """,
    Q.UPSERT_RESULT: """
        INSERT INTO results (task_id, clip_id, kind, data, job_key, created_at)
        VALUES (:task_id, :clip_id, :kind, :data, :job_key, :created_at)
        ON CONFLICT (task_id, clip_id, kind) DO UPDATE SET data = excluded.data,
            job_key = excluded.job_key
    """,
    Q.LIST_RESULTS: """
        SELECT task_id, clip_id, kind, data, job_key, created_at FROM results
        WHERE task_id = :task_id ORDER BY clip_id, kind
    """,
    Q.INSERT_CHILD: """
        INSERT INTO children (trigger_key, parent_task_id, root_task_id, rule, depth, task_type,
                              credits, request, child_task_id, state, error, created_at,
                              updated_at)
        VALUES (:trigger_key, :parent_task_id, :root_task_id, :rule, :depth, :task_type,
                :credits, :request, :child_task_id, :state, :error, :created_at, :updated_at)
        ON CONFLICT (trigger_key) DO NOTHING
    """,
    Q.GET_CHILD: f"SELECT {CHILD_COLUMNS} FROM children WHERE trigger_key = :trigger_key",
    Q.CHILD_BY_TASK: f"SELECT {CHILD_COLUMNS} FROM children WHERE child_task_id = :task_id",
    Q.LIST_CHILDREN: f"""
        SELECT {CHILD_COLUMNS} FROM children WHERE parent_task_id = :task_id
        ORDER BY created_at, trigger_key
    """,
    Q.UPDATE_CHILD: """
        UPDATE children SET state = :state, child_task_id = COALESCE(:child_task_id,
                            child_task_id), error = :error, updated_at = :now
        WHERE trigger_key = :trigger_key
    """,
    Q.CREDITS_UNDER_ROOT: """
        SELECT COALESCE(SUM(credits), 0) FROM children
        WHERE root_task_id = :task_id AND state != 'failed'
    """,
    Q.STALE_TASKS: """
        SELECT task_id FROM tasks
        WHERE state IN ('pending', 'running') AND last_event_at < :before
        ORDER BY last_event_at LIMIT :limit
    """,
    Q.TASKS_SINCE: """
        SELECT task_id FROM tasks WHERE first_seen_at >= :since ORDER BY first_seen_at
        LIMIT :limit
    """,
    Q.RAW_DELIVERIES: f"""
        SELECT {DELIVERY_COLUMNS}, headers, body FROM deliveries
        WHERE {_any("received_at", "since", _TIME, ">=")}
          AND {_any("received_at", "until", _TIME, "<")}
          AND {_any("task_id", "task_id")} AND {_any("outcome", "outcome")}
          AND pruned_at IS NULL
        ORDER BY id LIMIT :limit
    """,
    Q.DUPLICATES_OF: """
        SELECT duplicates, last_duplicate_at FROM deliveries WHERE delivery_id = :delivery_id
    """,
    Q.JOB_ATTEMPTS: """
        SELECT attempt, owner, started_at, outcome, error, finished_at FROM job_attempts
        WHERE job_id = :job_id ORDER BY run
    """,
    # The turn goes to whoever asks once the last holder's ran out (or to the holder again).
    Q.TAKE_TURN: """
        INSERT INTO turns (name, owner, until) VALUES (:name, :owner, :until)
        ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
        WHERE turns.until <= :now OR turns.owner = excluded.owner
    """,
    Q.INSERT_AUDIT: """
        INSERT INTO audit (at, actor, action, target, detail)
        VALUES (:at, :actor, :action, :target, :detail)
    """,
    # Retention: raw bodies of deliveries whose task is finished, received before :before.
    # Quarantined deliveries keep their bodies: they are what a replay after a fix needs.
    Q.PRUNE_BODIES: """
        UPDATE deliveries SET body = :empty, headers = '{}', pruned_at = :now
        WHERE received_at < :before AND pruned_at IS NULL AND outcome = 'recorded'
          AND task_id IN (SELECT task_id FROM tasks WHERE state IN ('succeeded', 'failed'))
    """,
    Q.COUNT_PRUNABLE_BODIES: """
        SELECT COUNT(*) FROM deliveries
        WHERE received_at < :before AND pruned_at IS NULL AND outcome = 'recorded'
          AND task_id IN (SELECT task_id FROM tasks WHERE state IN ('succeeded', 'failed'))
    """,
    Q.PRUNE_ATTEMPTS: """
        DELETE FROM job_attempts WHERE job_id IN (
            SELECT id FROM jobs WHERE state IN ('done', 'dead') AND updated_at < :before)
    """,
    Q.PRUNE_JOBS: "DELETE FROM jobs WHERE state IN ('done', 'dead') AND updated_at < :before",
    Q.COUNT_PRUNABLE_JOBS: """
        SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'dead') AND updated_at < :before
    """,
    # Delivery rows (the ids deduplication needs) go only after the longer id horizon, and
    # only once their body went; transitions keep their delivery_id as a plain text.
    Q.PRUNE_IDS: """
        DELETE FROM deliveries WHERE received_at < :before AND pruned_at IS NOT NULL
    """,
    # what PRUNE_IDS will find once PRUNE_BODIES ran (the id horizon is the older one)
    Q.COUNT_PRUNABLE_IDS: """
        SELECT COUNT(*) FROM deliveries
        WHERE received_at < :before AND (pruned_at IS NOT NULL OR (
            outcome = 'recorded'
            AND task_id IN (SELECT task_id FROM tasks WHERE state IN ('succeeded', 'failed'))))
    """,
    Q.COUNT_DELIVERIES: "SELECT COUNT(*) FROM deliveries",
    Q.COUNT_TASKS: "SELECT COUNT(*) FROM tasks",
    Q.COUNT_CLIPS: "SELECT COUNT(*) FROM clips",
    Q.COUNT_TRANSITIONS: "SELECT COUNT(*) FROM transitions",
    Q.COUNT_JOBS: "SELECT COUNT(*) FROM jobs",
    Q.COUNT_FILES: "SELECT COUNT(*) FROM files",
    Q.COUNT_CHILDREN: "SELECT COUNT(*) FROM children",
    # -- the console. A NULL cursor means the first page; ties on the sort key are broken by
    #    the id, so that a page never repeats or skips a row.
    Q.LIST_TASKS: f"""
        SELECT {", ".join("t." + c.strip() for c in TASK_COLUMNS.split(","))},
               (SELECT c.title FROM clips c WHERE c.task_seq = t.seq
                ORDER BY c.created_at, c.clip_id LIMIT 1),
               (SELECT COUNT(*) FROM clips c WHERE c.task_seq = t.seq)
        FROM tasks t
        WHERE {_any("t.state", "state")} AND {_any("t.task_type", "task_type")}
          AND {_any("t.parent_task_id", "parent")}
          AND {_any("t.first_seen_at", "since", _TIME, ">=")}
          AND {_any("t.first_seen_at", "until", _TIME, "<")}
          AND (CAST(:text AS TEXT) IS NULL OR EXISTS (
                SELECT 1 FROM clips c WHERE c.task_seq = t.seq AND LOWER(c.title) LIKE :text))
          AND (CAST(:tag AS TEXT) IS NULL OR EXISTS (
                SELECT 1 FROM clips c WHERE c.task_seq = t.seq AND LOWER(c.tags) LIKE :tag))
          AND (CAST(:c_at AS DOUBLE PRECISION) IS NULL OR t.first_seen_at < :c_at
               OR (t.first_seen_at = :c_at AND t.task_id < :c_id))
        ORDER BY t.first_seen_at DESC, t.task_id DESC LIMIT :limit
    """,
    Q.LIST_DELIVERIES: f"""
        SELECT id, {DELIVERY_COLUMNS}, duplicates, last_duplicate_at FROM deliveries
        WHERE {_any("outcome", "outcome")} AND (:only_duplicates = 0 OR duplicates > 0)
          AND {_any("event", "event")} AND {_any("source", "source")}
          AND {_any("task_id", "task_id")} AND {_any("received_at", "since", _TIME, ">=")}
          AND (CAST(:c_id AS BIGINT) IS NULL OR id < :c_id)
        ORDER BY id DESC LIMIT :limit
    """,
    Q.GET_DELIVERY: f"""
        SELECT id, {DELIVERY_COLUMNS}, duplicates, last_duplicate_at, headers, body, pruned_at
        FROM deliveries WHERE delivery_id = :delivery_id
    """,
    # a delivery's transitions are all of the task it was recorded for: found by its task
    Q.DELIVERY_TRANSITIONS: f"""
        SELECT {TRANSITION_COLUMNS} FROM transitions
        WHERE task_seq = {_TASK_SEQ} AND delivery_id = :delivery_id ORDER BY id
    """,
    Q.LIST_JOBS_PAGE: f"""
        SELECT {JOB_COLUMNS} FROM jobs
        WHERE {_JOB_FILTER} AND (CAST(:c_id AS BIGINT) IS NULL OR id < :c_id)
        ORDER BY id DESC LIMIT :limit
    """,
    Q.GET_JOB: f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = :id",
    Q.COUNT_MATCHING_JOBS: f"SELECT COUNT(*) FROM jobs WHERE {_JOB_FILTER}",
    Q.REQUEUE_MATCHING: f"""
        UPDATE jobs SET state = 'queued', attempts = 0, run_after = :now, last_error = NULL,
                        updated_at = :now
        WHERE {_JOB_FILTER} AND state IN ('dead', 'done')
    """,
    Q.LIST_AUDIT: """
        SELECT id, at, actor, action, target, detail FROM audit
        WHERE (CAST(:c_id AS BIGINT) IS NULL OR id < :c_id)
        ORDER BY id DESC LIMIT :limit
    """,
    # SQLite's CAST truncates, which for times after 1970 is the floor (PostgreSQL overrides)
    Q.DELIVERIES_PER_MINUTE: """
        SELECT CAST(received_at / 60 AS INTEGER) AS minute, COUNT(*) FROM deliveries
        WHERE received_at >= :since GROUP BY minute ORDER BY minute
    """,
    Q.DELIVERIES_BY_OUTCOME: """
        SELECT outcome, scheme, COUNT(*), COALESCE(SUM(duplicates), 0) FROM deliveries
        GROUP BY outcome, scheme
    """,
    Q.TASKS_BY_STATE: "SELECT state, COUNT(*) FROM tasks GROUP BY state",
    Q.JOBS_BY_STATE_HANDLER: "SELECT state, handler, COUNT(*) FROM jobs GROUP BY state, handler",
    # Since when the longest-waiting due job has been due (a retry in its backoff is not waiting)
    Q.OLDEST_QUEUED: """
        SELECT MIN(run_after) FROM jobs
        WHERE state IN ('queued', 'retrying') AND run_after <= :now
    """,
    Q.PENDING_DOWNLOADS: """
        SELECT COUNT(*), COALESCE(SUM(CASE WHEN created_at < :warn_before THEN 1 ELSE 0 END), 0)
        FROM jobs WHERE handler = 'download_audio' AND state IN ('queued', 'running', 'retrying')
    """,
    Q.TRANSITIONS_BY_STATE: """
        SELECT entity, to_state, COUNT(*) FROM transitions GROUP BY entity, to_state
    """,
    Q.BYTES_KEPT: "SELECT COALESCE(SUM(size), 0) FROM files",
    Q.RECOVERIES: "SELECT COUNT(*) FROM transitions WHERE entity = 'task' AND source = 'poll'",
}

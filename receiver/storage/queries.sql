-- Every statement of the store, once, by name (loaded by receiver/storage/sql.py).
--
-- `-- name: <name>` starts a statement; `-- name: <name> [postgresql]` (or [sqlite]) right
-- after it is that dialect's variant. Comment lines are documentation, dropped when compiled.
-- Parameters are `:name`, bound from a mapping. `:JobState.QUEUED` and the like name a member
-- of one of the receiver's enums: it is compiled into that member's value as a literal (the
-- values stand in Python only; the planner still sees a constant, which the partial indexes
-- need). Three macros expand per dialect: JSON_TEXTS(:p) and JSON_INTS(:p), the elements of a
-- JSON array bound as one parameter (for IN), and FOR_CLAIM(), `FOR UPDATE SKIP LOCKED` where
-- rows can be locked. A NULL parameter that stands for "any" is typed with CAST, so that
-- PostgreSQL can bind it. No `::` casts, no literal `%`.
--
-- A task's clips, transitions and jobs are keyed by the task's number (tasks.seq), found with
-- `(SELECT seq FROM tasks WHERE task_id = :task_id)`.
--
-- `[postgresql_batch]` is a statement's form for many units of work at once (PostgreSQL's
-- writer records a group-commit batch in a few statements: receiver/storage/postgres.py):
-- :rows is a JSON array of the parameter sets the units gave, one object each (bytes in
-- base64), read as rows by json_to_recordset; what a unit reads back is found by the
-- `unit_key` column, the value of the parameter the writer keys that statement by.


-- ---- recording ---------------------------------------------------------------------------

-- name: find_delivery
SELECT delivery_id, source, scheme, event, task_id, outcome, reason, received_at, provider,
       confirmed_by
FROM deliveries WHERE delivery_id = :delivery_id

-- name: count_duplicate
UPDATE deliveries SET duplicates = duplicates + 1, last_duplicate_at = :at
WHERE delivery_id = :delivery_id

-- name: insert_delivery
INSERT INTO deliveries (delivery_id, source, scheme, event, task_id, outcome, reason, headers,
                        body, received_at, provider)
VALUES (:delivery_id, :source, :scheme, :event, :task_id, :outcome, :reason, :headers, :body,
        :received_at, :provider)
ON CONFLICT (delivery_id) DO NOTHING

-- name: insert_delivery [postgresql_batch]
INSERT INTO deliveries (delivery_id, source, scheme, event, task_id, outcome, reason, headers,
                        body, received_at, provider)
SELECT delivery_id, source, scheme, event, task_id, outcome, reason, headers,
       decode(body, 'base64'), received_at, provider
FROM json_to_recordset(CAST(:rows AS JSON))
     AS b (delivery_id TEXT, source TEXT, scheme TEXT, event TEXT, task_id TEXT, outcome TEXT,
           reason TEXT, headers TEXT, body TEXT, received_at DOUBLE PRECISION, provider TEXT)
ON CONFLICT (delivery_id) DO NOTHING
RETURNING delivery_id AS unit_key

-- name: delete_quarantined
DELETE FROM deliveries
WHERE delivery_id = :delivery_id AND outcome = :Outcome.QUARANTINED

-- :clip_ids is a JSON array
-- name: task_for_clips
SELECT task_id FROM clips WHERE clip_id IN (JSON_TEXTS(:clip_ids)) LIMIT 1

-- Recording a task holds it until commit, so that what it reads of the task is the latest.
-- SQLite runs nothing: its BEGIN IMMEDIATE already runs one writer at a time.
-- name: lock_task

-- A transaction-scoped advisory lock per task, in a key space (two int4 keys) apart from the
-- migrations' bigint one: recording one task in two processes at once waits here instead of
-- both reading the old state and the later commit moving it back.
-- name: lock_task [postgresql]
SELECT pg_advisory_xact_lock(7318, hashtext(:task_id))

-- name: lock_task [postgresql_batch]
SELECT pg_advisory_xact_lock(7318, key)
FROM (SELECT DISTINCT hashtext(task_id) AS key
      FROM json_to_recordset(CAST(:rows AS JSON)) AS b (task_id TEXT) ORDER BY key) AS keys

-- name: task_state
SELECT state FROM tasks WHERE task_id = :task_id

-- the task's row (clip_id NULL) and its clips' rows, in one trip
-- name: task_before
SELECT NULL AS clip_id, state FROM tasks WHERE task_id = :task_id
UNION ALL
SELECT clip_id, state FROM clips WHERE task_seq = (SELECT seq FROM tasks WHERE task_id = :task_id)

-- name: task_before [postgresql_batch]
SELECT t.task_id AS unit_key, NULL AS clip_id, t.state FROM tasks t
WHERE t.task_id IN (SELECT task_id FROM json_to_recordset(CAST(:rows AS JSON)) AS b (task_id TEXT))
UNION ALL
SELECT t.task_id, c.clip_id, c.state FROM tasks t JOIN clips c ON c.task_seq = t.seq
WHERE t.task_id IN (SELECT task_id FROM json_to_recordset(CAST(:rows AS JSON)) AS b (task_id TEXT))

-- name: upsert_task
INSERT INTO tasks (task_id, state, platform, error, failure_category, first_seen_at,
                   updated_at, last_event_at, last_delivery_id, provider)
VALUES (:task_id, :state, :platform, :error, :failure_category, :at, :at, :at, :delivery_id,
        :provider)
ON CONFLICT (task_id) DO UPDATE SET
    updated_at = CASE WHEN tasks.state = excluded.state THEN tasks.updated_at
                      ELSE excluded.updated_at END,
    state = excluded.state,
    platform = COALESCE(excluded.platform, tasks.platform),
    error = COALESCE(excluded.error, tasks.error),
    failure_category = COALESCE(excluded.failure_category, tasks.failure_category),
    last_event_at = CASE WHEN tasks.last_event_at > excluded.last_event_at
                         THEN tasks.last_event_at ELSE excluded.last_event_at END,
    last_delivery_id = excluded.last_delivery_id

-- name: upsert_task [postgresql_batch]
INSERT INTO tasks (task_id, state, platform, error, failure_category, first_seen_at,
                   updated_at, last_event_at, last_delivery_id, provider)
SELECT task_id, state, platform, error, failure_category, at, at, at, delivery_id, provider
FROM json_to_recordset(CAST(:rows AS JSON))
     AS b (task_id TEXT, state TEXT, platform TEXT, error TEXT, failure_category TEXT,
           at DOUBLE PRECISION, delivery_id TEXT, provider TEXT)
ON CONFLICT (task_id) DO UPDATE SET
    updated_at = CASE WHEN tasks.state = excluded.state THEN tasks.updated_at
                      ELSE excluded.updated_at END,
    state = excluded.state,
    platform = COALESCE(excluded.platform, tasks.platform),
    error = COALESCE(excluded.error, tasks.error),
    failure_category = COALESCE(excluded.failure_category, tasks.failure_category),
    last_event_at = CASE WHEN tasks.last_event_at > excluded.last_event_at
                         THEN tasks.last_event_at ELSE excluded.last_event_at END,
    last_delivery_id = excluded.last_delivery_id

-- name: upsert_clip
INSERT INTO clips (task_seq, task_id, clip_id, state, title, tags, lyrics, audio_url, image_url,
                   video_url, duration, mv, created_at, data, updated_at)
VALUES ((SELECT seq FROM tasks WHERE task_id = :task_id), :task_id, :clip_id, :state, :title,
        :tags, :lyrics, :audio_url, :image_url, :video_url, :duration, :mv, :created_at, :data,
        :at)
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

-- name: upsert_clip [postgresql_batch]
INSERT INTO clips (task_seq, task_id, clip_id, state, title, tags, lyrics, audio_url, image_url,
                   video_url, duration, mv, created_at, data, updated_at)
SELECT (SELECT seq FROM tasks WHERE task_id = b.task_id), task_id, clip_id, state, title, tags,
       lyrics, audio_url, image_url, video_url, duration, mv, created_at, data, at
FROM json_to_recordset(CAST(:rows AS JSON))
     AS b (task_id TEXT, clip_id TEXT, state TEXT, title TEXT, tags TEXT, lyrics TEXT,
           audio_url TEXT, image_url TEXT, video_url TEXT, duration DOUBLE PRECISION, mv TEXT,
           created_at TEXT, data TEXT, at DOUBLE PRECISION)
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

-- name: insert_transition
INSERT INTO transitions (task_seq, task_id, entity, entity_id, from_state, to_state,
                         delivery_id, source, at)
VALUES ((SELECT seq FROM tasks WHERE task_id = :task_id), :task_id, :entity, :entity_id,
        :from_state, :to_state, :delivery_id, :source, :at)

-- name: insert_transition [postgresql_batch]
INSERT INTO transitions (task_seq, task_id, entity, entity_id, from_state, to_state,
                         delivery_id, source, at)
SELECT (SELECT seq FROM tasks WHERE task_id = b.task_id), task_id, entity, entity_id,
       from_state, to_state, delivery_id, source, at
FROM json_to_recordset(CAST(:rows AS JSON))
     AS b (task_id TEXT, entity TEXT, entity_id TEXT, from_state TEXT, to_state TEXT,
           delivery_id TEXT, source TEXT, at DOUBLE PRECISION)

-- the task's type and platform (the row whose kind is 'task'), then its clips' tags
-- name: task_facts
SELECT 'task' AS kind, task_type AS value, platform FROM tasks WHERE task_id = :task_id
UNION ALL
SELECT 'clip', tags, NULL FROM clips
WHERE task_seq = (SELECT seq FROM tasks WHERE task_id = :task_id)

-- name: task_facts [postgresql_batch]
SELECT t.task_id AS unit_key, 'task' AS kind, t.task_type AS value, t.platform FROM tasks t
WHERE t.task_id IN (SELECT task_id FROM json_to_recordset(CAST(:rows AS JSON)) AS b (task_id TEXT))
UNION ALL
SELECT t.task_id, 'clip', c.tags, NULL FROM tasks t JOIN clips c ON c.task_seq = t.seq
WHERE t.task_id IN (SELECT task_id FROM json_to_recordset(CAST(:rows AS JSON)) AS b (task_id TEXT))

-- :waits_for is a JSON array of handler names, or NULL
-- name: insert_job
INSERT INTO jobs (task_seq, key, handler, route, options, task_id, trigger, delivery_id, state,
                  max_attempts, run_after, created_at, updated_at, waits_for, wait_until)
VALUES ((SELECT seq FROM tasks WHERE task_id = :task_id), :key, :handler, :route, :options,
        :task_id, :trigger, :delivery_id, :JobState.QUEUED, :max_attempts, :at, :at, :at,
        :waits_for, :wait_until)
ON CONFLICT (task_seq, key) DO NOTHING

-- name: insert_job [postgresql_batch]
INSERT INTO jobs (task_seq, key, handler, route, options, task_id, trigger, delivery_id, state,
                  max_attempts, run_after, created_at, updated_at, waits_for, wait_until)
SELECT (SELECT seq FROM tasks WHERE task_id = b.task_id), key, handler, route, options,
       task_id, trigger, delivery_id, :JobState.QUEUED, max_attempts, at, at, at, waits_for,
       wait_until
FROM json_to_recordset(CAST(:rows AS JSON))
     AS b (key TEXT, handler TEXT, route TEXT, options TEXT, task_id TEXT, trigger TEXT,
           delivery_id TEXT, max_attempts INTEGER, at DOUBLE PRECISION, waits_for TEXT,
           wait_until DOUBLE PRECISION)
ON CONFLICT (task_seq, key) DO NOTHING
RETURNING task_id AS unit_key

-- A task created here: its provider is the one named, else its parent's (a follow-up).
-- name: register_task
INSERT INTO tasks (task_id, state, first_seen_at, updated_at, last_event_at, task_type,
                   parent_task_id, provider)
VALUES (:task_id, :State.PENDING, :at, :at, :at, :task_type, :parent,
        COALESCE(CAST(:provider AS TEXT), (SELECT p.provider FROM tasks p WHERE p.task_id = :parent),
                 'sonic'))
ON CONFLICT (task_id) DO UPDATE SET
    task_type = COALESCE(tasks.task_type, excluded.task_type),
    parent_task_id = COALESCE(tasks.parent_task_id, excluded.parent_task_id)

-- name: task_transitions
SELECT * FROM transitions
WHERE task_seq = (SELECT seq FROM tasks WHERE task_id = :task_id) AND entity = :Entity.TASK
ORDER BY id

-- name: probe_write
INSERT INTO probes (name, at) VALUES (:name, :at)
ON CONFLICT (name) DO UPDATE SET at = excluded.at


-- ---- reading a task ----------------------------------------------------------------------

-- name: get_task
SELECT * FROM tasks WHERE task_id = :task_id

-- name: get_clips
SELECT * FROM clips WHERE task_seq = (SELECT seq FROM tasks WHERE task_id = :task_id)
ORDER BY created_at, clip_id

-- name: get_transitions
SELECT * FROM transitions WHERE task_seq = (SELECT seq FROM tasks WHERE task_id = :task_id)
ORDER BY id


-- ---- the job queue -----------------------------------------------------------------------

-- Due jobs, and running ones whose lease ran out (their worker died), oldest due first. Each
-- kind is read in index order (jobs_due) up to :window rows, and only those are sorted: one
-- ORDER BY over the OR of the three would read and sort every due job on every claim. The top
-- :limit of the three tops is the top :limit of all. The rule is checked again on the locked
-- rows: on PostgreSQL a row claimed by another worker since this one's snapshot no longer
-- passes it; written as one CASE so that SQLite's planner takes the candidates' ids rather
-- than an index scan of the OR. On PostgreSQL, concurrent claims skip each other's locked rows
-- within :window.
-- name: claim_jobs
UPDATE jobs SET state = :JobState.RUNNING, attempts = attempts + 1, runs = runs + 1,
                lease_owner = :owner, lease_expires_at = :until, updated_at = :now
WHERE id IN (
    SELECT id FROM jobs
    WHERE id IN (
        SELECT id FROM (
            SELECT id FROM jobs WHERE state = :JobState.QUEUED AND run_after <= :now
            ORDER BY run_after, id LIMIT :window) AS due_queued
        UNION ALL
        SELECT id FROM (
            SELECT id FROM jobs WHERE state = :JobState.RETRYING AND run_after <= :now
            ORDER BY run_after, id LIMIT :window) AS due_retrying
        UNION ALL
        SELECT id FROM (
            SELECT id FROM jobs WHERE state = :JobState.RUNNING AND lease_expires_at <= :now
            ORDER BY run_after, id LIMIT :window) AS lease_expired
    )
    AND CASE WHEN state IN (:JobState.QUEUED, :JobState.RETRYING) THEN run_after <= :now
             WHEN state = :JobState.RUNNING THEN lease_expires_at <= :now
             ELSE FALSE END
    ORDER BY run_after, id LIMIT :limit FOR_CLAIM()
)
RETURNING *

-- Every claim is a row of its own, numbered by the job's runs (never reset, so a requeued job
-- keeps its history); what ends the run closes its row with the outcome.
-- name: start_attempt
INSERT INTO job_attempts (job_id, run, attempt, owner, started_at)
VALUES (:job_id, :run, :attempt, :owner, :now)

-- name: end_attempt
UPDATE job_attempts SET finished_at = :now, outcome = :outcome, error = :error
WHERE job_id = :job_id AND run = :run AND finished_at IS NULL

-- A claim that takes a job over: the earlier runs still open were a worker's that died or
-- lost its lease.
-- name: close_lost_attempts
UPDATE job_attempts SET finished_at = :now, outcome = :AttemptOutcome.LOST
WHERE job_id = :job_id AND run < :run AND finished_at IS NULL

-- name: renew_lease
UPDATE jobs SET lease_expires_at = :until, updated_at = :now
WHERE id = :id AND state = :JobState.RUNNING AND lease_owner = :owner

-- :ids is a JSON array of job ids; the ones still leased to :owner are finished, returned
-- name: finish_jobs
UPDATE jobs SET state = :JobState.DONE, lease_owner = NULL, lease_expires_at = NULL,
                updated_at = :now
WHERE id IN (JSON_INTS(:ids)) AND state = :JobState.RUNNING AND lease_owner = :owner
RETURNING id, runs

-- :refund is 1 when the attempt is not counted
-- name: retry_job
UPDATE jobs SET state = :JobState.RETRYING, lease_owner = NULL, lease_expires_at = NULL,
                last_error = :error, run_after = :run_after, updated_at = :now,
                attempts = attempts - :refund
WHERE id = :id AND state = :JobState.RUNNING AND lease_owner = :owner
RETURNING runs

-- name: kill_job
UPDATE jobs SET state = :JobState.DEAD, lease_owner = NULL, lease_expires_at = NULL,
                last_error = :error, updated_at = :now
WHERE id = :id AND state = :JobState.RUNNING AND lease_owner = :owner
RETURNING runs

-- A graceful stop hands running jobs back without charging the attempt.
-- name: release_jobs
UPDATE jobs SET state = :JobState.QUEUED, lease_owner = NULL, lease_expires_at = NULL,
                attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,
                run_after = :now, updated_at = :now
WHERE state = :JobState.RUNNING AND lease_owner = :owner
RETURNING id, runs

-- name: next_due
SELECT MIN(CASE WHEN state = :JobState.RUNNING THEN lease_expires_at ELSE run_after END) AS due
FROM jobs WHERE state IN (:JobState.QUEUED, :JobState.RETRYING, :JobState.RUNNING)

-- The jobs of :task_id but :job_id whose handler is in :handlers (a JSON array) that are not
-- finished yet
-- name: unfinished_jobs
SELECT COUNT(*) AS n FROM jobs
WHERE task_seq = (SELECT seq FROM tasks WHERE task_id = :task_id) AND id <> :job_id
  AND handler IN (JSON_TEXTS(:handlers))
  AND state IN (:JobState.QUEUED, :JobState.RETRYING, :JobState.RUNNING)

-- Jobs matching a filter, newest first, after the cursor :c_id; :delivery_ids, when not NULL,
-- is a JSON array of the deliveries whose jobs are wanted.
-- name: find_jobs
SELECT * FROM jobs
WHERE (CAST(:state AS TEXT) IS NULL OR state = :state)
  AND (CAST(:handler AS TEXT) IS NULL OR handler = :handler)
  AND (CAST(:task_id AS TEXT) IS NULL OR task_id = :task_id)
  AND (CAST(:since AS DOUBLE PRECISION) IS NULL OR created_at >= :since)
  AND (CAST(:until AS DOUBLE PRECISION) IS NULL OR created_at < :until)
  AND (CAST(:delivery_ids AS TEXT) IS NULL OR delivery_id IN (JSON_TEXTS(:delivery_ids)))
  AND (CAST(:c_id AS BIGINT) IS NULL OR id < :c_id)
ORDER BY id DESC LIMIT :limit

-- name: count_matching_jobs
SELECT COUNT(*) AS n FROM jobs
WHERE (CAST(:state AS TEXT) IS NULL OR state = :state)
  AND (CAST(:handler AS TEXT) IS NULL OR handler = :handler)
  AND (CAST(:task_id AS TEXT) IS NULL OR task_id = :task_id)
  AND (CAST(:since AS DOUBLE PRECISION) IS NULL OR created_at >= :since)
  AND (CAST(:until AS DOUBLE PRECISION) IS NULL OR created_at < :until)

-- Every finished job matching the filter, queued again in one statement, attempts reset.
-- name: requeue_matching
UPDATE jobs SET state = :JobState.QUEUED, attempts = 0, run_after = :now, last_error = NULL,
                updated_at = :now
WHERE (CAST(:state AS TEXT) IS NULL OR state = :state)
  AND (CAST(:handler AS TEXT) IS NULL OR handler = :handler)
  AND (CAST(:task_id AS TEXT) IS NULL OR task_id = :task_id)
  AND (CAST(:since AS DOUBLE PRECISION) IS NULL OR created_at >= :since)
  AND (CAST(:until AS DOUBLE PRECISION) IS NULL OR created_at < :until)
  AND state IN (:JobState.DEAD, :JobState.DONE)

-- :ids is a JSON array of job ids
-- name: requeue_jobs
UPDATE jobs SET state = :JobState.QUEUED, attempts = 0, run_after = :now, last_error = NULL,
                updated_at = :now
WHERE id IN (JSON_INTS(:ids)) AND state IN (:JobState.DEAD, :JobState.DONE)

-- name: get_job
SELECT * FROM jobs WHERE id = :id

-- name: job_attempts
SELECT * FROM job_attempts WHERE job_id = :job_id ORDER BY run


-- ---- what handlers leave behind ----------------------------------------------------------

-- name: upsert_file
INSERT INTO files (task_id, clip_id, kind, path, size, sha256, url, content_type, job_key,
                   created_at)
VALUES (:task_id, :clip_id, :kind, :path, :size, :sha256, :url, :content_type, :job_key,
        :created_at)
ON CONFLICT (task_id, clip_id, kind) DO UPDATE SET
    path = excluded.path, size = excluded.size, sha256 = excluded.sha256, url = excluded.url,
    content_type = excluded.content_type, job_key = excluded.job_key

-- name: list_files
SELECT * FROM files WHERE task_id = :task_id ORDER BY clip_id, kind

-- name: upsert_result
INSERT INTO results (task_id, clip_id, kind, data, job_key, created_at)
VALUES (:task_id, :clip_id, :kind, :data, :job_key, :created_at)
ON CONFLICT (task_id, clip_id, kind) DO UPDATE SET
    data = excluded.data, job_key = excluded.job_key

-- name: list_results
SELECT * FROM results WHERE task_id = :task_id ORDER BY clip_id, kind

-- name: insert_child
INSERT INTO children (trigger_key, parent_task_id, root_task_id, rule, depth, task_type,
                      credits, request, child_task_id, state, error, created_at, updated_at)
VALUES (:trigger_key, :parent_task_id, :root_task_id, :rule, :depth, :task_type, :credits,
        :request, :child_task_id, :state, :error, :created_at, :updated_at)
ON CONFLICT (trigger_key) DO NOTHING

-- name: get_child
SELECT * FROM children WHERE trigger_key = :trigger_key

-- name: child_by_task
SELECT * FROM children WHERE child_task_id = :task_id

-- name: list_children
SELECT * FROM children WHERE parent_task_id = :task_id ORDER BY created_at, trigger_key

-- name: update_child
UPDATE children SET state = :state, child_task_id = COALESCE(:child_task_id, child_task_id),
                    error = :error, updated_at = :now
WHERE trigger_key = :trigger_key

-- name: credits_under_root
SELECT COALESCE(SUM(credits), 0) AS credits FROM children
WHERE root_task_id = :task_id AND state <> :ChildState.FAILED


-- ---- replay and administration -----------------------------------------------------------

-- name: stale_tasks
SELECT task_id FROM tasks
WHERE state IN (:State.PENDING, :State.RUNNING) AND last_event_at < :before
ORDER BY last_event_at LIMIT :limit

-- name: tasks_since
SELECT task_id FROM tasks WHERE first_seen_at >= :since ORDER BY first_seen_at LIMIT :limit

-- name: raw_deliveries
SELECT delivery_id, source, scheme, event, task_id, outcome, reason, received_at, headers, body,
       provider, confirmed_by
FROM deliveries
WHERE (CAST(:since AS DOUBLE PRECISION) IS NULL OR received_at >= :since)
  AND (CAST(:until AS DOUBLE PRECISION) IS NULL OR received_at < :until)
  AND (CAST(:task_id AS TEXT) IS NULL OR task_id = :task_id)
  AND (CAST(:outcome AS TEXT) IS NULL OR outcome = :outcome)
  AND pruned_at IS NULL
ORDER BY id LIMIT :limit

-- The turn goes to whoever asks once the last holder's ran out (or to the holder again).
-- name: take_turn
INSERT INTO turns (name, owner, until) VALUES (:name, :owner, :until)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
WHERE turns.until <= :now OR turns.owner = excluded.owner

-- A holder that stops gives its turn back, so that the next process need not wait it out.
-- name: release_turn
UPDATE turns SET until = 0 WHERE name = :name AND owner = :owner

-- name: insert_audit
INSERT INTO audit (at, actor, action, target, detail)
VALUES (:at, :actor, :action, :target, :detail)

-- name: row_counts
SELECT (SELECT COUNT(*) FROM deliveries) AS deliveries, (SELECT COUNT(*) FROM tasks) AS tasks,
       (SELECT COUNT(*) FROM clips) AS clips, (SELECT COUNT(*) FROM transitions) AS transitions,
       (SELECT COUNT(*) FROM jobs) AS jobs, (SELECT COUNT(*) FROM files) AS files,
       (SELECT COUNT(*) FROM children) AS children


-- ---- retention ---------------------------------------------------------------------------

-- Raw bodies of deliveries whose task is finished, received before :before. Quarantined
-- deliveries keep their bodies: they are what a replay after a fix needs.
-- name: prune_bodies
UPDATE deliveries SET body = :empty, headers = '{}', pruned_at = :now
WHERE received_at < :before AND pruned_at IS NULL AND outcome = :Outcome.RECORDED
  AND task_id IN (SELECT task_id FROM tasks WHERE state IN (:State.SUCCEEDED, :State.FAILED))

-- name: count_prunable_bodies
SELECT COUNT(*) AS n FROM deliveries
WHERE received_at < :before AND pruned_at IS NULL AND outcome = :Outcome.RECORDED
  AND task_id IN (SELECT task_id FROM tasks WHERE state IN (:State.SUCCEEDED, :State.FAILED))

-- name: prune_attempts
DELETE FROM job_attempts WHERE job_id IN (
    SELECT id FROM jobs
    WHERE state IN (:JobState.DONE, :JobState.DEAD) AND updated_at < :before)

-- name: prune_jobs
DELETE FROM jobs WHERE state IN (:JobState.DONE, :JobState.DEAD) AND updated_at < :before

-- name: count_prunable_jobs
SELECT COUNT(*) AS n FROM jobs
WHERE state IN (:JobState.DONE, :JobState.DEAD) AND updated_at < :before

-- Delivery rows (the ids deduplication needs) go only after the longer id horizon, and only
-- once their body went; transitions keep their delivery_id as a plain text.
-- name: prune_ids
DELETE FROM deliveries WHERE received_at < :before AND pruned_at IS NOT NULL

-- what prune_ids will find once prune_bodies ran (the id horizon is the older one)
-- name: count_prunable_ids
SELECT COUNT(*) AS n FROM deliveries
WHERE received_at < :before AND (pruned_at IS NOT NULL OR (
    outcome = :Outcome.RECORDED
    AND task_id IN (SELECT task_id FROM tasks WHERE state IN (:State.SUCCEEDED, :State.FAILED))))


-- ---- the console: pages newest first, with keyset cursors -------------------------------
-- A NULL cursor means the first page; ties on the sort key are broken by the id, so that a
-- page never repeats or skips a row.

-- name: list_tasks
SELECT t.*,
       (SELECT c.title FROM clips c WHERE c.task_seq = t.seq
        ORDER BY c.created_at, c.clip_id LIMIT 1) AS title,
       (SELECT COUNT(*) FROM clips c WHERE c.task_seq = t.seq) AS clips
FROM tasks t
WHERE (CAST(:state AS TEXT) IS NULL OR t.state = :state)
  AND (CAST(:task_type AS TEXT) IS NULL OR t.task_type = :task_type)
  AND (CAST(:parent AS TEXT) IS NULL OR t.parent_task_id = :parent)
  AND (CAST(:since AS DOUBLE PRECISION) IS NULL OR t.first_seen_at >= :since)
  AND (CAST(:until AS DOUBLE PRECISION) IS NULL OR t.first_seen_at < :until)
  AND (CAST(:text AS TEXT) IS NULL OR EXISTS (
        SELECT 1 FROM clips c WHERE c.task_seq = t.seq AND LOWER(c.title) LIKE :text))
  AND (CAST(:tag AS TEXT) IS NULL OR EXISTS (
        SELECT 1 FROM clips c WHERE c.task_seq = t.seq AND LOWER(c.tags) LIKE :tag))
  AND (CAST(:c_at AS DOUBLE PRECISION) IS NULL OR t.first_seen_at < :c_at
       OR (t.first_seen_at = :c_at AND t.task_id < :c_id))
ORDER BY t.first_seen_at DESC, t.task_id DESC LIMIT :limit

-- name: list_deliveries
SELECT id, delivery_id, source, scheme, event, task_id, outcome, reason, received_at,
       duplicates, last_duplicate_at, provider, confirmed_by
FROM deliveries
WHERE (CAST(:outcome AS TEXT) IS NULL OR outcome = :outcome)
  AND (:only_duplicates = 0 OR duplicates > 0)
  AND (CAST(:event AS TEXT) IS NULL OR event = :event)
  AND (CAST(:source AS TEXT) IS NULL OR source = :source)
  AND (CAST(:task_id AS TEXT) IS NULL OR task_id = :task_id)
  AND (CAST(:since AS DOUBLE PRECISION) IS NULL OR received_at >= :since)
  AND (CAST(:c_id AS BIGINT) IS NULL OR id < :c_id)
ORDER BY id DESC LIMIT :limit

-- name: get_delivery
SELECT * FROM deliveries WHERE delivery_id = :delivery_id

-- a delivery's transitions are all of the task it was recorded for: found by its task
-- name: delivery_transitions
SELECT * FROM transitions
WHERE task_seq = (SELECT seq FROM tasks WHERE task_id = :task_id)
  AND delivery_id = :delivery_id
ORDER BY id

-- name: list_audit
SELECT * FROM audit WHERE (CAST(:c_id AS BIGINT) IS NULL OR id < :c_id)
ORDER BY id DESC LIMIT :limit

-- SQLite's CAST truncates, which for times after 1970 is the floor
-- name: deliveries_per_minute
SELECT CAST(received_at / 60 AS INTEGER) AS minute, COUNT(*) AS n FROM deliveries
WHERE received_at >= :since GROUP BY minute ORDER BY minute

-- name: deliveries_per_minute [postgresql]
SELECT CAST(FLOOR(received_at / 60) AS BIGINT) AS minute, COUNT(*) AS n FROM deliveries
WHERE received_at >= :since GROUP BY minute ORDER BY minute

-- name: deliveries_by_outcome
SELECT outcome, scheme, provider, COUNT(*) AS n, COALESCE(SUM(duplicates), 0) AS repeats
FROM deliveries GROUP BY outcome, scheme, provider

-- name: tasks_by_state
SELECT state, COUNT(*) AS n FROM tasks GROUP BY state

-- name: jobs_by_state_handler
SELECT state, handler, COUNT(*) AS n FROM jobs GROUP BY state, handler

-- Since when the longest-waiting due job has been due (a retry in its backoff is not waiting)
-- name: oldest_queued
SELECT MIN(run_after) AS due FROM jobs
WHERE state IN (:JobState.QUEUED, :JobState.RETRYING) AND run_after <= :now

-- Unfinished jobs of :handler, and those of them created before :warn_before
-- name: pending_jobs
SELECT COUNT(*) AS n,
       COALESCE(SUM(CASE WHEN created_at < :warn_before THEN 1 ELSE 0 END), 0) AS old
FROM jobs
WHERE state IN (:JobState.QUEUED, :JobState.RUNNING, :JobState.RETRYING) AND handler = :handler

-- name: transitions_by_state
SELECT entity, to_state, COUNT(*) AS n FROM transitions GROUP BY entity, to_state

-- name: bytes_kept
SELECT COALESCE(SUM(size), 0) AS n FROM files

-- name: recoveries
SELECT COUNT(*) AS n FROM transitions
WHERE entity = :Entity.TASK AND source = :Source.POLL


-- ---- watching: counts by the second, the alert rules' windows, alerts, deadlines ---------

-- name: add_tally
INSERT INTO tallies (name, bucket, label, count) VALUES (:name, :bucket, :label, :count)
ON CONFLICT (name, bucket, label) DO UPDATE SET count = tallies.count + excluded.count

-- name: tally_since
SELECT label, SUM(count) AS n FROM tallies WHERE name = :name AND bucket >= :since
GROUP BY label

-- name: prune_tallies
DELETE FROM tallies WHERE bucket < :before

-- Task transitions a poll recorded (no callback had brought them), in a window
-- name: polled_since
SELECT COUNT(*) AS n, COUNT(DISTINCT task_id) AS tasks FROM transitions
WHERE source = :Source.POLL AND at >= :since AND entity = :Entity.TASK

-- name: overdue_open
SELECT COUNT(*) AS n FROM tasks
WHERE state IN (:State.PENDING, :State.RUNNING) AND overdue_at IS NOT NULL

-- The open task seen first, and the last webhook delivery (the callbacks-stopped rule's quiet)
-- name: quiet_since
SELECT (SELECT MIN(first_seen_at) FROM tasks
        WHERE state IN (:State.PENDING, :State.RUNNING)) AS oldest_open,
       (SELECT MAX(received_at) FROM deliveries
        WHERE source = :Source.WEBHOOK) AS last_webhook

-- Tasks that ended in a window: how many succeeded, how many failed by category
-- name: ended_since
SELECT state, COALESCE(failure_category, 'unknown') AS category, COUNT(*) AS n FROM tasks
WHERE state IN (:State.SUCCEEDED, :State.FAILED) AND last_event_at >= :since
GROUP BY state, COALESCE(failure_category, 'unknown')

-- name: dead_since
SELECT handler, COUNT(*) AS n, MAX(id) AS last_id FROM jobs
WHERE state = :JobState.DEAD AND updated_at >= :since
GROUP BY handler ORDER BY handler

-- name: job_brief
SELECT task_id, last_error FROM jobs WHERE id = :id

-- name: quarantined_since
SELECT COUNT(*) AS n, MAX(id) AS last_id FROM deliveries
WHERE outcome = :Outcome.QUARANTINED AND received_at >= :since

-- name: delivery_by_row
SELECT delivery_id, reason FROM deliveries WHERE id = :id

-- Unfinished jobs of the handlers that keep audio, created before :before, with their task's
-- platform (the downloads-at-risk rule); dead ones too: the links may still be there to retry
-- name: downloads_pending
SELECT jobs.id, jobs.task_id, jobs.handler, jobs.state, jobs.created_at, tasks.platform
FROM jobs LEFT JOIN tasks ON tasks.task_id = jobs.task_id
WHERE jobs.state IN (:JobState.QUEUED, :JobState.RUNNING, :JobState.RETRYING, :JobState.DEAD)
  AND jobs.handler IN (JSON_TEXTS(:handlers)) AND jobs.created_at < :before
  AND jobs.created_at >= :after
ORDER BY jobs.created_at LIMIT 500

-- name: open_alerts
SELECT * FROM alerts WHERE resolved_at IS NULL ORDER BY rule, subject

-- name: insert_alert
INSERT INTO alerts (rule, subject, text, advice, link, fired_at, seen_at, notified_at)
VALUES (:rule, :subject, :text, :advice, :link, :at, :at, :at)
ON CONFLICT (rule, subject) WHERE resolved_at IS NULL DO NOTHING
RETURNING id

-- name: insert_past_alert
INSERT INTO alerts (rule, subject, text, advice, fired_at, seen_at, notified_at, resolved_at)
VALUES (:rule, :subject, :text, :advice, :fired_at, :resolved_at, :fired_at, :resolved_at)
RETURNING id

-- name: alert_seen
UPDATE alerts SET text = :text, advice = :advice, link = :link, seen_at = :at
WHERE id = :id AND resolved_at IS NULL

-- name: alert_repeated
UPDATE alerts SET text = :text, advice = :advice, link = :link, seen_at = :at,
                  notified_at = :at, repeats = repeats + 1
WHERE id = :id AND resolved_at IS NULL

-- name: alert_resolved
UPDATE alerts SET resolved_at = :at WHERE id = :id AND resolved_at IS NULL

-- name: insert_alert_message
INSERT INTO alert_messages (alert_id, kind, title, body, created_at)
VALUES (:alert_id, :kind, :title, :body, :at)

-- name: due_alert_messages
SELECT * FROM alert_messages WHERE done_at IS NULL ORDER BY id LIMIT :limit

-- name: alert_message_tried
UPDATE alert_messages SET sent_to = :sent_to, attempts = attempts + 1, last_error = :error,
                          done_at = :done_at
WHERE id = :id

-- name: outbox_size
SELECT COALESCE(SUM(CASE WHEN done_at IS NULL THEN 1 ELSE 0 END), 0) AS due,
       COALESCE(SUM(CASE WHEN done_at IS NULL THEN 0 ELSE 1 END), 0) AS done
FROM alert_messages

-- name: prune_alert_messages
DELETE FROM alert_messages WHERE done_at IS NOT NULL AND done_at < :before

-- name: list_alerts
SELECT * FROM alerts
WHERE (CAST(:active AS INTEGER) = 0 OR resolved_at IS NULL)
  AND (CAST(:before AS BIGINT) IS NULL OR id < :before)
ORDER BY id DESC LIMIT :limit

-- name: alerts_by_rule
SELECT rule, COUNT(*) AS fired, SUM(CASE WHEN resolved_at IS NULL THEN 1 ELSE 0 END) AS active
FROM alerts GROUP BY rule

-- name: failed_by_category
SELECT COALESCE(failure_category, 'unknown') AS category, provider, COUNT(*) AS n FROM tasks
WHERE state = :State.FAILED GROUP BY COALESCE(failure_category, 'unknown'), provider

-- Open tasks first seen before :before and not yet found overdue (the deadlines' candidates)
-- name: past_deadline
SELECT task_id, task_type, first_seen_at FROM tasks
WHERE state IN (:State.PENDING, :State.RUNNING) AND overdue_at IS NULL
  AND first_seen_at < :before
ORDER BY first_seen_at LIMIT :limit

-- name: mark_overdue
UPDATE tasks SET overdue_at = :at
WHERE task_id = :task_id AND overdue_at IS NULL AND state IN (:State.PENDING, :State.RUNNING)

-- ---- engine steps -------------------------------------------------------------------------

-- Every task a batch records, locked first, in one order (receiver/storage/postgres.py);
-- SQLite's BEGIN IMMEDIATE already runs one writer at a time.
-- name: lock_tasks

-- name: lock_tasks [postgresql]
SELECT pg_advisory_xact_lock(7318, key)
FROM (SELECT DISTINCT hashtext(task) AS key FROM unnest(CAST(:task_ids AS TEXT[])) AS task
      ORDER BY key) AS keys


-- ---- the console's sessions --------------------------------------------------------------
-- A session is open while it is not ended, not past expires_at (its absolute end) and was
-- seen after :idle_before (its idle limit). Only a hash of the cookie's secret is stored.

-- name: insert_session
INSERT INTO console_sessions (secret_hash, operator, token_hash, created_at, seen_at,
                              expires_at, client, user_agent)
VALUES (:secret_hash, :operator, :token_hash, :now, :now, :expires_at, :client, :user_agent)

-- name: find_session
SELECT * FROM console_sessions
WHERE secret_hash = :secret_hash AND ended_at IS NULL AND expires_at > :now
  AND seen_at > :idle_before

-- name: touch_session
UPDATE console_sessions SET seen_at = :now WHERE id = :id AND ended_at IS NULL

-- name: end_session
UPDATE console_sessions SET ended_at = :now, ended_by = :ended_by
WHERE id = :id AND ended_at IS NULL

-- name: list_sessions
SELECT * FROM console_sessions
WHERE ended_at IS NULL AND expires_at > :now AND seen_at > :idle_before
ORDER BY seen_at DESC, id DESC LIMIT :limit

-- rows of sessions over long enough ago that nobody needs them to say who was logged in
-- name: forget_sessions
DELETE FROM console_sessions
WHERE expires_at < :before OR ended_at < :before OR seen_at < :before


-- ---- the console's pages: what a list row or a chain shows of other tasks ----------------

-- every title of each task's clips, in the clips' order (:task_ids is a JSON array)
-- name: titles_of_tasks
SELECT t.task_id, c.title FROM clips c JOIN tasks t ON t.seq = c.task_seq
WHERE t.task_id IN (JSON_TEXTS(:task_ids)) AND c.title IS NOT NULL
ORDER BY t.task_id, c.created_at, c.clip_id

-- name: states_of_tasks
SELECT task_id, state FROM tasks WHERE task_id IN (JSON_TEXTS(:task_ids))


-- ---- providers (receiver.providers, receiver.confirmation) ------------------------------
-- A per-task callback token, kept as its SHA-256: written before the create call (its task
-- is not known yet), bound to the task once the provider named it.

-- name: insert_token
INSERT INTO callback_tokens (token_hash, provider, task_id, created_at)
VALUES (:token_hash, :provider, NULL, :at)

-- name: bind_token
UPDATE callback_tokens SET task_id = :task_id WHERE token_hash = :token_hash

-- name: delete_token
DELETE FROM callback_tokens WHERE token_hash = :token_hash

-- name: find_token
SELECT provider, task_id FROM callback_tokens WHERE token_hash = :token_hash

-- name: task_provider
SELECT provider FROM tasks WHERE task_id = :task_id

-- An unconfirmed delivery takes effect (a poll agreed: :by is the poll's delivery) or not.
-- name: confirm_delivery
UPDATE deliveries SET outcome = :Outcome.RECORDED, confirmed_by = :by
WHERE delivery_id = :delivery_id AND outcome = :Outcome.UNCONFIRMED

-- name: contradict_delivery
UPDATE deliveries SET outcome = :Outcome.CONTRADICTED, reason = :reason
WHERE delivery_id = :delivery_id AND outcome = :Outcome.UNCONFIRMED

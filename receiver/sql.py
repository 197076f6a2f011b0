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
       last_delivery_id
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
}

-- 1: deliveries, tasks, clips, transitions
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

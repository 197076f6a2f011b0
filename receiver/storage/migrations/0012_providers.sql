-- 12: the provider of every delivery and task (receiver.providers: sonic unless another
-- provider's endpoint took it or its client created it); the poll delivery that confirmed a
-- callback whose body nothing authenticated (a delivery of outcome 'unconfirmed' becomes
-- 'recorded' or 'contradicted'); and the per-task tokens the receiver put in the callback URLs
-- of the tasks it created through a provider that signs no body, kept as their SHA-256 (a
-- token is only compared, never shown again).
ALTER TABLE deliveries ADD COLUMN provider TEXT NOT NULL DEFAULT 'sonic';
ALTER TABLE deliveries ADD COLUMN confirmed_by TEXT;
ALTER TABLE tasks ADD COLUMN provider TEXT NOT NULL DEFAULT 'sonic';

CREATE TABLE callback_tokens (
    token_hash  TEXT PRIMARY KEY,
    provider    TEXT NOT NULL,
    task_id     TEXT,
    created_at  {real} NOT NULL
);

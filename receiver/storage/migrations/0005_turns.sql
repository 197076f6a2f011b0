-- 5: turns: what one process among several does on a schedule (reconcile, prune)
CREATE TABLE turns (
    name   TEXT PRIMARY KEY,
    owner  TEXT NOT NULL,
    until  {real} NOT NULL
);

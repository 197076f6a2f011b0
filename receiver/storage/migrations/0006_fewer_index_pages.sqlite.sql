-- 6, SQLite only: these indexes serve only the console's optional filters,
-- `(:x IS NULL OR column = :x)`, which SQLite plans once for any value and never searches with
-- them (it pages newest first by id instead); PostgreSQL plans them with the value bound.
DROP INDEX deliveries_event;
DROP INDEX deliveries_task;
DROP INDEX jobs_task;
DROP INDEX jobs_created;

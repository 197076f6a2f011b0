-- 7, PostgreSQL only: the two indexes of jobs that migration 6 kept there, and the jobs' id
-- sequence moved past the ids the new table was given (SQLite's next rowid already is).
CREATE INDEX jobs_task ON jobs (task_id);
CREATE INDEX jobs_created ON jobs (created_at);
SELECT setval(pg_get_serial_sequence('jobs', 'id'),
              COALESCE((SELECT MAX(id) FROM jobs), 0) + 1, false);

-- 9: a job counts its runs (claims), so that each run's row of the attempt log is known by its
-- number: what ends a run closes that row alone, and a claim that takes a job over from a
-- worker that died or lost its lease closes that worker's row as lost.
ALTER TABLE jobs ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET runs = (SELECT COALESCE(MAX(run), 0) FROM job_attempts
                        WHERE job_attempts.job_id = jobs.id);

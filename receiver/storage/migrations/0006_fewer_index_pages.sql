-- 6: fewer index pages written per delivery. An insert touches a leaf of every index of its
-- table, and each page touched is written whole to the WAL: indexes no query needs are dropped,
-- others narrowed to the rows their queries read (partial indexes).
-- - transitions_task, transitions_delivery: a task's transitions are found by the UNIQUE
--   (task_id, entity, entity_id, to_state), a delivery's through its task;
-- - jobs_handler: jobs_due gains the handler, (state, run_after, handler);
-- - tasks_parent, jobs_finished, deliveries_outcome: partial, on the rows their readers want.
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

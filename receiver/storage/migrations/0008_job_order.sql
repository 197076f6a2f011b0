-- 8: a job may run after other jobs of its task (a route's `after`, or what its handler needs
-- that another handler provides): the handlers it waits for, and until when at most.
ALTER TABLE jobs ADD COLUMN waits_for TEXT;
ALTER TABLE jobs ADD COLUMN wait_until {real};

-- 4: the console: what a delivery did, and pages of deliveries by kind of event
CREATE INDEX transitions_delivery ON transitions (delivery_id);
CREATE INDEX deliveries_event ON deliveries (event, id);
CREATE INDEX jobs_created ON jobs (created_at);

-- The relay counts failed publishes per row. A row the broker can never route (no queue is
-- bound to its key) is parked after a bound: marked sent and parked, its copy kept in
-- dead_letters (queue 'outbox') where the dead-letter API shows it. Rows waiting on a full
-- queue are never parked.
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN last_error text;
ALTER TABLE outbox ADD COLUMN parked_at timestamptz;

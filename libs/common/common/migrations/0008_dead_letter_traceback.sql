-- The traceback of an unexpected handler failure, kept with its dead letter (the consumer
-- bounds it to the last 8000 characters); NULL for expected failures and broker deaths.
ALTER TABLE dead_letters ADD COLUMN traceback text;

-- An outbox row may name one queue to deliver to (through the default exchange) instead of
-- routing by its key: a dead letter requeued goes back to the queue that parked it, not to
-- every consumer of its event.
ALTER TABLE outbox ADD COLUMN queue text;

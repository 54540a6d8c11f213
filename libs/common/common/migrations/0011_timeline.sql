-- Issue 16: what an operator needs to follow one upload without a tracing backend.

-- The ingest request's own timing and its place in a trace: when the gateway started on the
-- request (created_at is when its rows were written), the request span's id (a later upload
-- of the same content links to it), and whether the trace was recorded at all (sampling).
ALTER TABLE jobs
    ADD COLUMN received_at timestamptz,
    ADD COLUMN span_id text,
    ADD COLUMN trace_sampled boolean;

-- One row per message a consumer handled (per queue: one event may feed several stages),
-- written by the consumer wrapper when it starts and when it finishes each delivery. Times are
-- the event's: queued_at when it was recorded for publishing (outbox row or publish), published_at
-- when the broker took it, started_at when the first delivery began, finished_at when the last
-- one ended (NULL while it is retried or running). work_seconds sums the handler's time over
-- every attempt; the rest of finished - queued was spent waiting.
CREATE TABLE stage_runs (
    stage           text NOT NULL,
    message_id      uuid NOT NULL,
    service         text NOT NULL,
    queue           text NOT NULL,
    job_id          uuid,
    content_id      uuid,
    upload_ids      uuid[] NOT NULL DEFAULT '{}',
    queued_at       timestamptz,
    published_at    timestamptz,
    started_at      timestamptz NOT NULL,
    last_started_at timestamptz NOT NULL,
    finished_at     timestamptz,
    attempts        integer NOT NULL DEFAULT 1,
    work_seconds    double precision NOT NULL DEFAULT 0,
    outcome         text NOT NULL
                    CHECK (outcome IN ('running', 'ok', 'retrying', 'failed')),
    error           text,
    trace_id        text,
    PRIMARY KEY (stage, message_id)
);
CREATE INDEX stage_runs_content_idx ON stage_runs (content_id) WHERE content_id IS NOT NULL;
CREATE INDEX stage_runs_job_idx ON stage_runs (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX stage_runs_started_idx ON stage_runs (started_at);

-- The analyzer's VLM rate limit, shared by every replica: a sliding-window log of calls.
-- Taken under an advisory lock, trimmed as it goes; one row per call in the last window.
CREATE TABLE vlm_calls (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX vlm_calls_at_idx ON vlm_calls (at);

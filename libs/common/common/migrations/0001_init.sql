-- The data model of "Content is processed once" (DESIGN.md).
CREATE EXTENSION IF NOT EXISTS vector;

-- One request to the gateway.
CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    owner           text NOT NULL,
    request_id      text NOT NULL,
    trace_id        text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_owner_created_idx ON jobs (owner, created_at DESC);

-- Idempotency keys are scoped to the caller; the stored response is replayed on a safe retry.
CREATE TABLE idempotency_keys (
    scope           text NOT NULL,
    key             text NOT NULL,
    request_hash    text NOT NULL,
    -- deferred: the key is claimed first, before the job row of the same transaction exists
    job_id          uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE
                    DEFERRABLE INITIALLY DEFERRED,
    response        jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- Embedding models: every vector and cluster names the model that made it.
CREATE TABLE models (
    id              text PRIMARY KEY,
    dim             integer NOT NULL CHECK (dim > 0 AND dim <= 16000),
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Folders of similar media. The centroid is kept as the sum of member vectors and a count:
-- cosine similarity to the sum equals cosine similarity to the mean.
CREATE TABLE clusters (
    id              uuid PRIMARY KEY,
    model_id        text NOT NULL REFERENCES models (id),
    name            text NOT NULL,
    name_source     text NOT NULL DEFAULT 'placeholder'
                    CHECK (name_source IN ('placeholder', 'vlm', 'admin')),
    provisional     boolean NOT NULL DEFAULT true,
    threshold       real NOT NULL CHECK (threshold > 0 AND threshold <= 1),
    centroid_sum    vector,
    centroid        vector,
    member_count    integer NOT NULL DEFAULT 0 CHECK (member_count >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name)
);

-- The bytes, identified by their sha256, stored once. Everything derived from them lives here.
CREATE TABLE content (
    id              uuid PRIMARY KEY,
    sha256          text NOT NULL UNIQUE CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    kind            text NOT NULL CHECK (kind IN ('image', 'video', 'json')),
    mime_type       text NOT NULL,
    size_bytes      bigint NOT NULL CHECK (size_bytes >= 0),
    -- media bytes live in storage under this key; a JSON document lives in `document`
    storage_key     text,
    document        jsonb,
    -- ingested -> embedded -> clustered for media, ingested -> stored for JSON; or failed.
    stage           text NOT NULL DEFAULT 'ingested'
                    CHECK (stage IN ('ingested', 'embedded', 'clustered', 'stored', 'failed')),
    error           text,
    stage_updated_at timestamptz NOT NULL DEFAULT now(),
    first_job_id    uuid NOT NULL,
    -- media facts (embedder)
    width           integer,
    height          integer,
    format          text,
    duration_s      real,
    exif            jsonb,
    phash           bit(64),      -- perceptual hash; near-duplicates by Hamming distance
    near_duplicate_of uuid REFERENCES content (id),
    thumbnail_key   text,
    -- analysis (analyzer); off the critical path, so it has its own marker, not a stage
    analysis        jsonb,
    analysis_model  text,
    analyzed_at     timestamptz,
    tags            text[] NOT NULL DEFAULT '{}',
    -- cluster (clusterer)
    cluster_id      uuid REFERENCES clusters (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'json') = (document IS NOT NULL)),
    CHECK (kind = 'json' OR storage_key IS NOT NULL)
);
CREATE INDEX content_tags_gin ON content USING gin (tags);
-- Near-duplicate lookup by Hamming distance through an index, not a scan.
CREATE INDEX content_phash_hnsw ON content USING hnsw (phash bit_hamming_ops)
    WHERE phash IS NOT NULL;
CREATE INDEX content_cluster_idx ON content (cluster_id) WHERE cluster_id IS NOT NULL;
-- The reconciler and the "oldest unfinished item" metrics look for work stuck in a stage.
CREATE INDEX content_unfinished_idx ON content (stage, stage_updated_at)
    WHERE stage IN ('ingested', 'embedded');

-- Embeddings in a column without a fixed dimension, one row per (content, model). Each model
-- gets its own partial expression HNSW index (see register_model), so a second model of
-- another dimension is stored and indexed without hand-editing SQL.
CREATE TABLE embeddings (
    content_id      uuid NOT NULL REFERENCES content (id) ON DELETE CASCADE,
    model_id        text NOT NULL REFERENCES models (id),
    embedding       vector NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (content_id, model_id)
);

-- Keyframes of a video, each with its own embedding.
CREATE TABLE video_frames (
    content_id      uuid NOT NULL REFERENCES content (id) ON DELETE CASCADE,
    frame_index     integer NOT NULL CHECK (frame_index >= 0),
    timestamp_s     real NOT NULL,
    storage_key     text,
    model_id        text REFERENCES models (id),
    embedding       vector,
    PRIMARY KEY (content_id, frame_index)
);

-- One upload: who sent which file in which job. Many uploads may share one content.
CREATE TABLE uploads (
    id              uuid PRIMARY KEY,
    job_id          uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    content_id      uuid NOT NULL REFERENCES content (id),
    owner           text NOT NULL,
    filename        text,
    comments        text,
    position        integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, position)
);
CREATE INDEX uploads_content_idx ON uploads (content_id);
CREATE INDEX uploads_owner_idx ON uploads (owner, created_at DESC);

-- What happened and who did it.
CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL,
    action          text NOT NULL,
    entity          text NOT NULL,
    entity_id       text NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_entity_idx ON audit_log (entity, entity_id, at);

-- Transactional outbox: events written in the same transaction as their cause.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    message_id      uuid NOT NULL UNIQUE,
    routing_key     text NOT NULL,
    body            bytea NOT NULL,
    headers         jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Messages parked after their last attempt, as the dead-letter recorder found them.
CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    message_id      text NOT NULL,
    queue           text NOT NULL,
    routing_key     text,
    body            bytea NOT NULL,
    headers         jsonb NOT NULL DEFAULT '{}',
    error           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    content_id      uuid,
    job_id          uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    requeued_at     timestamptz,
    UNIQUE (message_id, queue)
);
CREATE INDEX dead_letters_job_idx ON dead_letters (job_id);
CREATE INDEX dead_letters_content_idx ON dead_letters (content_id);

-- The schemer (services/schemer): JSON documents grouped into collections, each with an
-- inferred schema and a decision, materialised as a table or a JSONB table in the
-- `collections` schema once an admin approves.

CREATE SCHEMA IF NOT EXISTS collections;

-- The role the schemer runs its DDL and its writes to `collections` as: rights on that schema
-- only, so nothing derived from a user's keys can reach another table. Created where the
-- database allows it (CREATEROLE); elsewhere the schemer says so at start and runs as itself.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mammoth_schemer') THEN
        CREATE ROLE mammoth_schemer NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege OR duplicate_object OR unique_violation THEN
    RAISE NOTICE 'role mammoth_schemer not created: %', SQLERRM;
END $$;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'mammoth_schemer') THEN
        GRANT USAGE, CREATE ON SCHEMA collections TO mammoth_schemer;
        -- The schemer's own login may switch to it (SET ROLE), and reads what it owns.
        EXECUTE format('GRANT mammoth_schemer TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN
    RAISE NOTICE 'role mammoth_schemer not granted: %', SQLERRM;
END $$;

-- One collection of one owner's documents. While provisional its documents are staged
-- (they live in content.document); approval creates the table and moves them in.
CREATE TABLE json_collections (
    id              uuid PRIMARY KEY,
    owner           text NOT NULL,
    name            text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    name_source     text NOT NULL CHECK (name_source IN ('given', 'generated')),
    -- the job whose batch opened it (the rest of that batch finds it by this)
    opened_by_job   uuid,
    status          text NOT NULL DEFAULT 'provisional'
                    CHECK (status IN ('provisional', 'approving', 'approved', 'rejecting',
                                      'rejected')),
    -- the proposal while provisional, what exists once approved or rejected
    storage         text NOT NULL CHECK (storage IN ('table', 'jsonb')),
    -- the key paths a new document is compared with (Jaccard similarity)
    paths           text[] NOT NULL DEFAULT '{}',
    -- the inference state (mergeable statistics per key path)
    stats           jsonb NOT NULL,
    -- per key path, for people: presence, kinds, type, cardinality, max length
    fields          jsonb NOT NULL DEFAULT '[]',
    -- storage, reasons and confidence, in plain words
    decision        jsonb NOT NULL,
    json_schema     jsonb NOT NULL,
    -- the table's columns, once it exists: [{path, column, type}]
    columns         jsonb,
    proposed_ddl    text NOT NULL DEFAULT '',
    table_name      text UNIQUE,
    document_count  bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    decided_at      timestamptz,
    decided_by      text,
    UNIQUE (owner, name)
);

-- Where each JSON upload's document went: a row per upload (not per content: two owners'
-- identical documents each reach their own collection).
CREATE INDEX json_collections_job_idx ON json_collections (opened_by_job)
    WHERE opened_by_job IS NOT NULL;

CREATE TABLE json_documents (
    upload_id       uuid PRIMARY KEY REFERENCES uploads (id) ON DELETE CASCADE,
    collection_id   uuid NOT NULL REFERENCES json_collections (id) ON DELETE CASCADE,
    content_id      uuid NOT NULL REFERENCES content (id),
    placement       text NOT NULL CHECK (placement IN ('staged', 'table', 'jsonb')),
    -- the row in the collection's table (its _id), once placed there
    row_id          bigint,
    -- part of the document did not fit the table's columns: it is in the _overflow column
    overflow        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    placed_at       timestamptz,
    CHECK ((placement = 'staged') = (row_id IS NULL))
);
CREATE INDEX json_documents_staged_idx ON json_documents (collection_id, upload_id)
    WHERE placement = 'staged';
CREATE INDEX json_documents_collection_idx ON json_documents (collection_id);

-- A change to an approved table that later documents asked for (a new key, a wider type);
-- applied when an admin approves it. Until then those values wait in _overflow.
CREATE TABLE json_migrations (
    collection_id   uuid NOT NULL REFERENCES json_collections (id) ON DELETE CASCADE,
    n               integer NOT NULL CHECK (n >= 1),
    status          text NOT NULL DEFAULT 'proposed'
                    CHECK (status IN ('proposed', 'approving', 'applied')),
    -- [{path, column, type, action: add | widen, from}]
    changes         jsonb NOT NULL,
    ddl             text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    applied_at      timestamptz,
    PRIMARY KEY (collection_id, n)
);
-- At most one migration waits per collection; later misfits extend it.
CREATE UNIQUE INDEX json_migrations_open_idx ON json_migrations (collection_id)
    WHERE status <> 'applied';

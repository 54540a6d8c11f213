-- Deletion (gateway/deletion.py, clusterer/purge.py, schemer/deletion.py): an upload goes at
-- once; its content goes when no upload refers to it any more. A content row that was purged
-- leaves its id here, so that a consumer still holding an event about it finishes quietly
-- instead of parking the event as a fault (content that never existed still is one).
CREATE TABLE content_tombstones (
    content_id      uuid PRIMARY KEY,
    sha256          text NOT NULL,
    kind            text NOT NULL,
    deleted_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX content_tombstones_deleted_idx ON content_tombstones (deleted_at);

-- Purging a content clears the near-duplicate label of the copies that pointed at it.
CREATE INDEX content_near_duplicate_idx ON content (near_duplicate_of)
    WHERE near_duplicate_of IS NOT NULL;
-- Retention (gateway/retention.py) looks for uploads by age, across owners.
CREATE INDEX uploads_created_idx ON uploads (created_at);

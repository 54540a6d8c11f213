-- The clusterer: each model's own cluster threshold, and folders waiting to be brought in
-- line with the database after a merge, reject or re-evaluation.

-- From the model's manifest (the embedder records it); NULL means CLUSTER_THRESHOLD.
ALTER TABLE models ADD COLUMN cluster_threshold real
    CHECK (cluster_threshold > 0 AND cluster_threshold <= 1);

-- Written in the same transaction as a change that moves members out of a folder; a
-- clusterer syncs the folder after the commit, or a later sweep does after a crash.
CREATE TABLE folder_syncs (
    cluster_id      uuid PRIMARY KEY,
    requested_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX clusters_model_idx ON clusters (model_id, provisional, created_at);

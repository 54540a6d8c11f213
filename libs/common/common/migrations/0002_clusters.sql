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

-- `centroid_sum` and `member_count` are exact (cosine to the sum is cosine to the mean);
-- `centroid` is the search key in the model's HNSW index: the normalised sum as of its last
-- refresh, redone whenever the sum has drifted from it (see clusterer/repo.py). Room on each
-- page lets a join that leaves the key alone update in place (HOT), without an index insert.
ALTER TABLE clusters SET (fillfactor = 70);
COMMENT ON COLUMN clusters.centroid IS
    'HNSW search key: l2_normalize(centroid_sum) as of its last refresh (drift <= 1e-3)';

CREATE INDEX clusters_model_idx ON clusters (model_id, provisional, created_at);

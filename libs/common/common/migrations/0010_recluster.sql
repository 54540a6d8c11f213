-- Issue 15: thresholds that calibrate themselves from the data, and re-clustering runs that
-- propose merges, splits and moves for an admin to accept or dismiss.

-- What the clusterer derived from a sample of the model's embeddings (clusterer/calibration.py):
-- the joining threshold of every cluster without one of its own, the linkage threshold of the
-- re-clustering, and how they came about (items, sample, percentiles, prior).
ALTER TABLE models
    ADD COLUMN calibrated_threshold real
        CHECK (calibrated_threshold > 0 AND calibrated_threshold <= 1),
    ADD COLUMN linkage_threshold real
        CHECK (linkage_threshold > -1 AND linkage_threshold <= 1),
    ADD COLUMN calibration jsonb,
    ADD COLUMN calibrated_at timestamptz;

-- A cluster's own threshold is what an admin set; NULL follows the model's calibrated one.
-- Clusters made before now carried the model's value of the day: they follow the model,
-- unless an admin's threshold change is on record.
ALTER TABLE clusters ALTER COLUMN threshold DROP NOT NULL;
UPDATE clusters cl SET threshold = NULL
WHERE NOT EXISTS (
    SELECT 1 FROM audit_log a
    WHERE a.entity = 'cluster' AND a.entity_id = cl.id::text
      AND a.action = 'cluster.update_threshold'
);

-- One re-clustering of one model: what it looked at and what it proposed.
CREATE TABLE recluster_runs (
    id              uuid PRIMARY KEY,
    model_id        text NOT NULL REFERENCES models (id),
    requested_by    text NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz,
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'done', 'failed')),
    items           integer,
    clusters        integer,
    regions         integer,
    linkage_threshold real,
    proposed        integer,
    seconds         real,
    error           text
);
CREATE INDEX recluster_runs_model_idx ON recluster_runs (model_id, started_at DESC);

-- A proposal: merge clusters, split one, or move members. `fingerprint` names the change
-- (kind, clusters, members): a run that finds an open or dismissed proposal again adds
-- nothing. `plan` is what accepting does, in the clusterer's terms (target, sources, parts).
CREATE TABLE cluster_proposals (
    id              uuid PRIMARY KEY,
    run_id          uuid NOT NULL REFERENCES recluster_runs (id),
    model_id        text NOT NULL REFERENCES models (id),
    kind            text NOT NULL CHECK (kind IN ('merge', 'split', 'move')),
    cluster_ids     uuid[] NOT NULL,
    plan            jsonb NOT NULL,
    reason          text NOT NULL,
    gain            real NOT NULL,
    fingerprint     text NOT NULL,
    status          text NOT NULL DEFAULT 'open'
                    CHECK (status IN ('open', 'accepted', 'dismissed', 'stale')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    decided_at      timestamptz,
    decided_by      text
);
CREATE UNIQUE INDEX cluster_proposals_live_idx ON cluster_proposals (fingerprint)
    WHERE status IN ('open', 'dismissed');
CREATE INDEX cluster_proposals_status_idx ON cluster_proposals (status, model_id, gain DESC);
CREATE INDEX cluster_proposals_clusters_idx ON cluster_proposals USING gin (cluster_ids);

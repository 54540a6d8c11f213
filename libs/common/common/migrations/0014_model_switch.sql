-- Switching the embedding model (common/model_switch.py): the next model embeds every content
-- beside the active one and the clusterer builds its clusters on the side (standby), search
-- keeps the active model until an admin flips, and the old model's data goes on request.

-- The model search uses, and clusters are shown for: exactly one. A model whose data was
-- dropped after a switch is retired: an embedder refuses to start on it.
ALTER TABLE models ADD COLUMN active boolean NOT NULL DEFAULT false,
                   ADD COLUMN retired_at timestamptz;
CREATE UNIQUE INDEX models_one_active_idx ON models (active) WHERE active;
-- Until now the model in use was the one the embedder ran: the one with the most vectors.
UPDATE models SET active = true
WHERE id = (SELECT m.id FROM models m LEFT JOIN embeddings e ON e.model_id = m.id
            GROUP BY m.id ORDER BY count(e.content_id) DESC, m.created_at DESC LIMIT 1);

-- One switch from the active model to the next; at most one is live (not dropped or
-- cancelled) at a time. `report` holds what the flip did (names carried across, refiled).
CREATE TABLE model_switches (
    id              uuid PRIMARY KEY,
    from_model      text NOT NULL REFERENCES models (id),
    to_model        text NOT NULL REFERENCES models (id),
    status          text NOT NULL DEFAULT 'backfilling'
                    CHECK (status IN ('backfilling', 'paused', 'flipped', 'dropped', 'cancelled')),
    requested_by    text NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    flipped_at      timestamptz,
    finished_at     timestamptz,
    report          jsonb NOT NULL DEFAULT '{}',
    CHECK (from_model <> to_model)
);
CREATE UNIQUE INDEX model_switches_live_idx ON model_switches ((true))
    WHERE status IN ('backfilling', 'paused', 'flipped');

-- Cluster membership under the model of a live switch that is not the active one (the next
-- one before the flip, the old one after it): `content.cluster_id` is the active model's.
CREATE TABLE standby_members (
    content_id      uuid NOT NULL REFERENCES content (id) ON DELETE CASCADE,
    model_id        text NOT NULL REFERENCES models (id),
    cluster_id      uuid NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    PRIMARY KEY (content_id, model_id)
);
CREATE INDEX standby_members_cluster_idx ON standby_members (cluster_id);
CREATE INDEX standby_members_model_idx ON standby_members (model_id);

-- A video's frames are embedded by each model too.
DELETE FROM video_frames WHERE model_id IS NULL;
ALTER TABLE video_frames ALTER COLUMN model_id SET NOT NULL;
ALTER TABLE video_frames DROP CONSTRAINT video_frames_pkey;
ALTER TABLE video_frames ADD PRIMARY KEY (content_id, model_id, frame_index);

-- A cluster's name is unique among its model's clusters: the next model's clusters carry the
-- confirmed names of the old one's.
ALTER TABLE clusters DROP CONSTRAINT clusters_name_key;
ALTER TABLE clusters ADD CONSTRAINT clusters_model_name_key UNIQUE (model_id, name);

-- The backfill looks for media content without the next model's embedding.
CREATE INDEX content_media_idx ON content (id) WHERE kind <> 'json' AND stage IN ('embedded', 'clustered');

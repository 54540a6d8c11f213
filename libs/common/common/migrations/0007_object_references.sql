-- The storage sweeper (gateway/sweep.py) asks, for each stored object, whether any row still
-- refers to it: content through its sha256 key, thumbnails and video frames through these.
CREATE INDEX content_thumbnail_key_idx ON content (thumbnail_key)
    WHERE thumbnail_key IS NOT NULL;
CREATE INDEX video_frames_storage_key_idx ON video_frames (storage_key)
    WHERE storage_key IS NOT NULL;

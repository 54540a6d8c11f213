-- Text seen in images (the analyzer's `visible_text`), searchable: a full-text vector kept by
-- PostgreSQL itself from the analysis, with its index. 'simple': no stemming or stop words,
-- since that text is often codes, numbers and names in any language.
ALTER TABLE content ADD COLUMN visible_text tsvector
    GENERATED ALWAYS AS (to_tsvector('simple', coalesce(analysis->>'visible_text', ''))) STORED;
CREATE INDEX content_visible_text_gin ON content USING gin (visible_text);

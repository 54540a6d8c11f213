"""Versioned event models. The routing key carries the version; unknown fields are ignored."""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class Event(BaseModel):
    """Base of every bus message: frozen, with a message id and a schema version."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    routing_key: ClassVar[str]
    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    schema_version: int = 1

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class MediaIngested(Event):
    """New media content is stored and waits for the embedder."""

    routing_key: ClassVar[str] = "media.ingested.v1"
    content_id: uuid.UUID
    job_id: uuid.UUID
    sha256: str
    kind: Literal["image", "video"]
    mime_type: str
    size_bytes: int


class JsonIngested(Event):
    """A new JSON document is stored and waits for the schemer."""

    routing_key: ClassVar[str] = "json.ingested.v1"
    content_id: uuid.UUID
    job_id: uuid.UUID
    sha256: str
    size_bytes: int


class MediaEmbedded(Event):
    """Content has its embedding, media facts, thumbnail and pHash."""

    routing_key: ClassVar[str] = "media.embedded.v1"
    content_id: uuid.UUID
    job_id: uuid.UUID
    kind: Literal["image", "video"]
    model_id: str
    near_duplicate_of: uuid.UUID | None = None


class MediaRecluster(MediaEmbedded):
    """Content taken out of a cluster (reject, re-evaluation) to be filed again as if new.

    Bound only to the clusterer's queue: the analyzer has nothing to redo.
    """

    routing_key: ClassVar[str] = "media.recluster.v1"


class MediaUploaded(Event):
    """Another upload of media already stored: the clusterer adds its link to the folder."""

    routing_key: ClassVar[str] = "media.uploaded.v1"
    upload_id: uuid.UUID
    content_id: uuid.UUID
    job_id: uuid.UUID


class MediaClustered(Event):
    """Content is filed in a cluster (its folder holds a link per upload)."""

    routing_key: ClassVar[str] = "media.clustered.v1"
    content_id: uuid.UUID
    job_id: uuid.UUID
    cluster_id: uuid.UUID
    model_id: str
    new_cluster: bool = False


# `vlm_model` of an analysis made by the analyzer's CLIP zero-shot fallback, not a VLM.
CLIP_FALLBACK_MODEL = "clip-fallback"


class MediaAnalyzed(Event):
    """The analyzer stored its analysis; the clusterer names provisional clusters from it."""

    routing_key: ClassVar[str] = "media.analyzed.v1"
    content_id: uuid.UUID
    job_id: uuid.UUID
    vlm_model: str = Field(max_length=200)
    suggested_cluster_name: str | None = Field(None, max_length=500)
    primary_category: str | None = Field(None, max_length=500)
    tags: list[str] = Field(default_factory=list, max_length=50)


class TextEmbedRequest(BaseModel):
    """An RPC request to the embedder: texts in, one vector per text out."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    texts: list[str] = Field(min_length=1, max_length=256)


class EmbedReply(BaseModel):
    """The embedder's answer to a text or an image RPC: vectors (or an error), with the model
    that made them."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model_id: str | None = None
    vectors: list[list[float]] = Field(default_factory=list)
    error: str | None = None
    # True when the model has no text encoder: asking again will not help.
    no_text_encoder: bool = False


# The registry: every event by its routing key. Consumers decode by it (common.consumer), so
# a new version is a new class here, handled alongside the old one during a rollout.
EVENTS: dict[str, type[Event]] = {
    cls.routing_key: cls
    for cls in (
        MediaIngested,
        JsonIngested,
        MediaEmbedded,
        MediaRecluster,
        MediaUploaded,
        MediaClustered,
        MediaAnalyzed,
    )
}

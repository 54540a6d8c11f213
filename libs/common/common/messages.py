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


# Uploads a JSON ingest event carries at most; a larger request is several events of one job.
JSON_UPLOADS_PER_EVENT = 1000


class JsonIngested(Event):
    """JSON uploads of one request wait for the schemer: every upload, stored bytes or not
    (a document belongs to its upload). The uploads of one request are one batch for one
    collection: the one named, or the one the schemer finds or opens."""

    routing_key: ClassVar[str] = "json.ingested.v2"
    job_id: uuid.UUID
    upload_ids: list[uuid.UUID] = Field(min_length=1, max_length=JSON_UPLOADS_PER_EVENT)
    collection: str | None = Field(None, max_length=63)


class JsonIngestedV1(Event):
    """The first version: new JSON content, one event each (written by earlier releases and
    decoded still, so that what they queued is not stranded: it stands for the job's uploads
    of that content)."""

    routing_key: ClassVar[str] = "json.ingested.v1"
    content_id: uuid.UUID
    job_id: uuid.UUID
    sha256: str
    size_bytes: int


class SchemaCommand(Event):
    """An admin's decision on a collection, carried out by the schemer (approval moves every
    staged document into a table: it may take a while, so it is not an RPC)."""

    routing_key: ClassVar[str] = "schema.command.v1"
    collection_id: uuid.UUID
    action: Literal["approve", "reject", "approve_migration"]
    migration: int | None = Field(None, ge=1)
    actor: str = Field("admin", max_length=200)


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


class StandbyEmbedded(MediaEmbedded):
    """Content embedded by the model of a switch that is not the active one (the backfill, or
    a new upload embedded by both): the clusterer files it in that model's standby clusters.

    Its own queue, so that a backfill of every content never delays the filing of new ones;
    the analyzer has nothing to do with it.
    """

    routing_key: ClassVar[str] = "media.standby-embedded.v1"


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


# Uploads an uploads.deleted event names at most; a larger deletion is several events.
DELETED_UPLOADS_PER_EVENT = 1000


class DeletedDocument(BaseModel):
    """A deleted JSON upload and the collection that held its document."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    upload_id: uuid.UUID
    collection_id: uuid.UUID


class UploadsDeleted(Event):
    """Uploads are gone (their rows deleted by the gateway); what they referred to follows:
    the clusterer purges media content no upload refers to any more and brings folders in
    line, the schemer removes the documents from their collections and purges JSON content.
    `owner_deleted` names an owner all of whose data goes, collections included."""

    routing_key: ClassVar[str] = "uploads.deleted.v1"
    upload_ids: list[uuid.UUID] = Field(max_length=DELETED_UPLOADS_PER_EVENT)
    content_ids: list[uuid.UUID] = Field(max_length=DELETED_UPLOADS_PER_EVENT)
    documents: list[DeletedDocument] = Field(
        default_factory=list, max_length=DELETED_UPLOADS_PER_EVENT
    )
    owner_deleted: str | None = Field(None, max_length=200)
    actor: str = Field("gateway", max_length=200)
    reason: Literal["request", "owner", "retention"] = "request"


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
        JsonIngestedV1,
        SchemaCommand,
        MediaEmbedded,
        UploadsDeleted,
        MediaRecluster,
        StandbyEmbedded,
        MediaUploaded,
        MediaClustered,
        MediaAnalyzed,
    )
}

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


EVENTS: dict[str, type[Event]] = {cls.routing_key: cls for cls in (MediaIngested, JsonIngested)}

"""Search queries: the request model, and hits ranked (pure; the SQL is gateway/repo/search.py).

The HTTP side is gateway/search.py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)


class SearchRequest(BaseModel):
    """A search: `query` (text) or `like` (an upload id), with filters and paging."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: str | None = Field(None, min_length=1, max_length=1000)
    like: uuid.UUID | None = None
    kind: Literal["image", "video"] | None = None
    owner: str | None = Field(None, min_length=1, max_length=200)
    cluster_id: uuid.UUID | None = None
    tags: list[str] = Field(default_factory=list, max_length=20)
    tags_mode: Literal["any", "all"] = "any"
    # Only content with an upload (the owner's, with `owner`) made in [after, before).
    uploaded_after: AwareDatetime | None = None
    uploaded_before: AwareDatetime | None = None
    threshold: float = Field(0.2, ge=-1, le=1)
    limit: int = Field(20, ge=1, le=100)
    offset: int = Field(0, ge=0, le=10_000)

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value.strip() if value else value

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        if any(not t.strip() or len(t) > 100 for t in tags):
            raise ValueError("tags must be 1-100 characters")
        return [t.strip().lower() for t in tags]

    @model_validator(mode="after")
    def _dates(self) -> SearchRequest:
        after, before = self.uploaded_after, self.uploaded_before
        if after is not None and before is not None and after >= before:
            raise ValueError("uploaded_after must be before uploaded_before")
        return self

    @model_validator(mode="after")
    def _one_of(self) -> SearchRequest:
        if (self.query is None) == (self.like is None):
            raise ValueError("give exactly one of query or like")
        return self


# A hit whose visible text contains every word of the query ranks this much higher: a
# scanned invoice that says "invoice 2024" beats pictures that merely look like documents.
TEXT_MATCH_BOOST = 0.5


@dataclass(frozen=True)
class Hit:
    content_id: uuid.UUID
    similarity: float
    text_match: bool = False

    @property
    def score(self) -> float:
        return self.similarity + (TEXT_MATCH_BOOST if self.text_match else 0.0)


class ImageSearch(SearchRequest):
    """A search by an uploaded image: the same filters, and neither query nor like."""

    @model_validator(mode="after")
    def _one_of(self) -> ImageSearch:
        if self.query is not None or self.like is not None:
            raise ValueError("a search by image takes no query or like")
        return self


def merge(by_vector: list[Hit], by_text: list[Hit]) -> list[Hit]:
    """One list, best score first; a content found both ways counts as a text match."""
    merged = {h.content_id: h for h in by_vector}
    merged.update({h.content_id: h for h in by_text})
    return sorted(merged.values(), key=lambda h: -h.score)

"""Search queries: the request model, and the SQL that answers it (vector and visible text).

The HTTP side is gateway/search.py; bench/search.py runs these same statements.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.vectors import model_literal


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


# The model's HNSW index is the only plan the search transaction allows (the planner would
# price a scan and sort of a small or filtered table lower, not counting its TOAST fetches),
# with pgvector's iterative scan so that a filter removing most neighbours still fills a page.
SEARCH_SETTINGS = (
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;"
    " SET LOCAL enable_sort = off; SET LOCAL hnsw.iterative_scan = relaxed_order;"
    " SET LOCAL hnsw.ef_search = 100"
)


def _filters(
    model_id: str, vector: NDArray[np.float32], search: SearchRequest, exclude: uuid.UUID | None
) -> tuple[str, list[Any]]:
    """The WHERE clause every kind of search shares, and its arguments ($1 is the query
    vector, $2 the number of rows wanted)."""
    conditions = [f"e.model_id = {model_literal(model_id)}", "c.stage <> 'failed'"]
    args: list[Any] = [vector, search.offset + search.limit + 1]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if search.kind:
        conditions.append(f"c.kind = {arg(search.kind)}")
    if search.cluster_id:
        conditions.append(f"c.cluster_id = {arg(search.cluster_id)}")
    if search.tags:
        op = "&&" if search.tags_mode == "any" else "@>"
        conditions.append(f"c.tags {op} {arg(search.tags)}::text[]")
    if search.owner:
        owner = arg(search.owner)
        conditions.append(
            f"EXISTS (SELECT 1 FROM uploads u WHERE u.content_id = c.id AND u.owner = {owner})"
        )
    if exclude:
        conditions.append(f"c.id <> {arg(exclude)}")
    return " AND ".join(conditions), args


def search_query(
    model_id: str,
    dim: int,
    vector: NDArray[np.float32],
    search: SearchRequest,
    exclude: uuid.UUID | None,
) -> tuple[str, list[Any]]:
    """The nearest-neighbour statement for a search and its arguments."""
    cast = f"vector({dim})" if dim <= 2000 else f"halfvec({dim})"
    where, args = _filters(model_id, vector, search, exclude)
    distance = f"e.embedding::{cast} <=> $1::vector::{cast}"
    sql = f"""SELECT e.content_id, {distance} AS distance
              FROM embeddings e JOIN content c ON c.id = e.content_id
              WHERE {where}
              ORDER BY {distance} LIMIT $2"""
    return sql, args


async def nearest(
    conn: asyncpg.Connection,
    model_id: str,
    dim: int,
    vector: NDArray[np.float32],
    search: SearchRequest,
    exclude: uuid.UUID | None,
) -> list[Hit]:
    """Content nearest to the vector that passes the filters and the threshold, best first.

    Up to offset + limit + 1 hits (one more tells whether another page exists).
    """
    sql, args = search_query(model_id, dim, vector, search, exclude)
    async with conn.transaction():
        await conn.execute(SEARCH_SETTINGS)
        rows = await conn.fetch(sql, *args)
    # relaxed_order may return neighbours slightly out of order: sort them exactly.
    hits = sorted(
        (Hit(r["content_id"], 1 - float(r["distance"])) for r in rows),
        key=lambda h: -h.similarity,
    )
    return [h for h in hits if h.similarity >= search.threshold]


async def text_matches(
    conn: asyncpg.Connection,
    model_id: str,
    vector: NDArray[np.float32],
    search: SearchRequest,
) -> list[Hit]:
    """Content whose visible text holds every word of the query (through its GIN index), with
    the same filters, and its vector similarity to the query."""
    where, args = _filters(model_id, vector, search, None)
    rows = await conn.fetch(
        f"""SELECT e.content_id, 1 - (e.embedding <=> $1::vector) AS similarity
            FROM embeddings e JOIN content c ON c.id = e.content_id
            WHERE {where}
              AND c.visible_text @@ plainto_tsquery('simple', ${len(args) + 1})
            ORDER BY ts_rank(c.visible_text, plainto_tsquery('simple', ${len(args) + 1})) DESC
            LIMIT $2""",
        *args,
        search.query,
    )
    hits = [Hit(r["content_id"], float(r["similarity"]), text_match=True) for r in rows]
    return [h for h in hits if h.score >= search.threshold]


def merge(by_vector: list[Hit], by_text: list[Hit]) -> list[Hit]:
    """One list, best score first; a content found both ways counts as a text match."""
    merged = {h.content_id: h for h in by_vector}
    merged.update({h.content_id: h for h in by_text})
    return sorted(merged.values(), key=lambda h: -h.score)


async def describe(
    conn: asyncpg.Connection, hits: list[Hit], owner: str | None
) -> list[dict[str, Any]]:
    if not hits:
        return []
    rows = await conn.fetch(
        """SELECT c.id, c.kind, c.tags, c.cluster_id, cl.name AS cluster_name, c.thumbnail_key,
                  c.mime_type, u.id AS upload_id, u.filename, u.owner
           FROM content c
           LEFT JOIN clusters cl ON cl.id = c.cluster_id
           CROSS JOIN LATERAL (
               SELECT id, filename, owner FROM uploads
               WHERE content_id = c.id AND ($2::text IS NULL OR owner = $2)
               ORDER BY created_at, id LIMIT 1
           ) u
           WHERE c.id = ANY($1::uuid[])""",
        [h.content_id for h in hits],
        owner,
    )
    by_id = {r["id"]: r for r in rows}
    results = []
    for hit in hits:
        row = by_id.get(hit.content_id)
        if row is None:
            continue
        upload_id = str(row["upload_id"])
        results.append(
            {
                "id": upload_id,
                "content_id": str(row["id"]),
                "kind": row["kind"],
                "similarity": round(hit.similarity, 6),
                "score": round(hit.score, 6),
                "text_match": hit.text_match,
                "tags": list(row["tags"] or []),
                "cluster": {"id": str(row["cluster_id"]), "name": row["cluster_name"]}
                if row["cluster_id"]
                else None,
                "filename": row["filename"],
                "owner": row["owner"],
                "content_url": f"/api/v1/objects/{upload_id}/content",
                "thumbnail_url": f"/api/v1/objects/{upload_id}/thumbnail"
                if row["thumbnail_key"]
                else None,
            }
        )
    return results

"""Search: text (through the embedder's text RPC) or an existing upload, matched with pgvector.

One hit per content (the same bytes uploaded twice are one hit), shown through its earliest
upload the caller may see. A text query also looks for the words in the text the analyzer
read in each image; such a match adds TEXT_MATCH_BOOST to the hit's score. Hits whose score is
below the threshold are never returned, so a query that matches nothing answers with an empty
list, not the least bad ones.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import numpy as np
import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from numpy.typing import NDArray
from prometheus_client import Histogram
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.bus import BusUnavailable
from common.embed_client import EmbedError, NoTextEncoder
from common.vectors import model_literal
from gateway.auth import bound_owner
from gateway.deps import DEPS
from gateway.errors import ApiError, invalid, read_json

SEARCH_LATENCY = Histogram(
    "search_latency_seconds",
    "Time to answer a search, by kind of query.",
    ["query"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
MAX_BODY = 64 * 1024


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


def _parse(raw: dict[str, Any], model: type[SearchRequest] = SearchRequest) -> SearchRequest:
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise invalid("search", error) from None


def _from_query_string(request: web.Request) -> dict[str, Any]:
    known = set(SearchRequest.model_fields)
    unknown = sorted(set(request.query) - known)
    if unknown:
        raise ApiError(400, "invalid search", {"unknown parameters": unknown})
    raw: dict[str, Any] = {k: v for k, v in request.query.items() if k != "tags"}
    tags = [t for value in request.query.getall("tags", []) for t in value.split(",") if t]
    if tags:
        raw["tags"] = tags
    return raw


async def handle_search_get(request: web.Request) -> web.Response:
    return await _search(request, _parse(_from_query_string(request)))


class ImageSearch(SearchRequest):
    """A search by an uploaded image: the same filters, and neither query nor like."""

    @model_validator(mode="after")
    def _one_of(self) -> ImageSearch:
        if self.query is not None or self.like is not None:
            raise ValueError("a search by image takes no query or like")
        return self


async def handle_search_post(request: web.Request) -> web.Response:
    """A JSON search, or (multipart/form-data) a search by the image in the `image` part."""
    if request.content_type == "multipart/form-data":
        fields, image = await _read_image_search(request)
        search = _parse(fields, ImageSearch)
        return await _search(request, search, await _embed_image(request, image))
    body = await read_json(request, MAX_BODY)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return await _search(request, _parse(body))


async def _search(
    request: web.Request,
    search: SearchRequest,
    by_image: tuple[str, NDArray[np.float32]] | None = None,
) -> web.Response:
    deps = request.app[DEPS]
    start = time.perf_counter()
    owner = bound_owner(request)
    if owner is not None:
        # A key bound to an owner searches that owner's uploads, whatever it asks for.
        if search.owner not in (None, owner):
            raise ApiError(403, "this key searches only its own owner's uploads")
        search = search.model_copy(update={"owner": owner})
    exclude = None
    if by_image is not None:
        model_id, vector = by_image
    elif search.query is not None:
        model_id, vector = await _embed_text(request, search.query)
    else:
        assert search.like is not None
        model_id, vector, exclude = await _embed_of_upload(deps.pool, search.like, owner)
    dim = await deps.pool.fetchval("SELECT dim FROM models WHERE id = $1", model_id)
    if dim is None:
        raise ApiError(503, "the embedding model is not registered yet")
    async with deps.pool.acquire() as conn:
        hits = await nearest(conn, model_id, int(dim), vector, search, exclude)
        if search.query is not None:
            hits = _merge(hits, await text_matches(conn, model_id, vector, search))
        page = hits[search.offset : search.offset + search.limit]
        results = await _describe(conn, page, search.owner)
    elapsed = time.perf_counter() - start
    kind = "image" if by_image else "text" if search.query is not None else "like"
    SEARCH_LATENCY.labels(kind).observe(elapsed)
    return web.json_response(
        {
            "results": results,
            # Hits are ranked by an approximate index: `total` counts those found so far
            # (this page and the ones before it); `has_more` says whether another page has any.
            "total": search.offset + len(page),
            "has_more": len(hits) > search.offset + search.limit,
            "limit": search.limit,
            "offset": search.offset,
            "model_id": model_id,
            "query_time_ms": round(elapsed * 1000, 2),
        }
    )


async def _embed_text(request: web.Request, text: str) -> tuple[str, NDArray[np.float32]]:
    client = request.app[DEPS].text_embeddings
    try:
        model_id, vectors = await client.embed([text])
    except NoTextEncoder:
        raise ApiError(
            409, "text search is off: the embedding model has no text encoder; search with like="
        ) from None
    except (EmbedError, BusUnavailable) as error:
        raise ApiError(
            503, f"text embedding unavailable: {error}", headers={"Retry-After": "5"}
        ) from None
    return model_id, vectors[0]


async def _read_image_search(request: web.Request) -> tuple[dict[str, Any], bytes]:
    """The form's fields and its `image` part, within SEARCH_IMAGE_MAX_BYTES."""
    limit = request.app[DEPS].settings.search_image_max_bytes
    fields: dict[str, Any] = {}
    image: bytes | None = None
    try:
        reader = await request.multipart()
        parts = 0
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > 20 or not isinstance(part, BodyPartReader):
                raise ApiError(400, "a search form has an image and a few fields")
            if part.name == "image":
                image = await _read_limited(part, limit, "the image")
            elif part.name in SearchRequest.model_fields and part.name not in ("query", "like"):
                value = (await _read_limited(part, 2000, part.name)).decode("utf-8", "replace")
                fields[part.name] = value.split(",") if part.name == "tags" else value
            else:
                raise ApiError(400, "invalid search", {"unknown field": part.name})
    except (ValueError, AssertionError, HttpProcessingError) as error:
        raise ApiError(400, f"malformed form: {error}") from None
    if not image:
        raise ApiError(400, "a search by image needs an `image` part")
    return fields, image


async def _read_limited(part: BodyPartReader, limit: int, what: str) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"{what} is over {limit} bytes")
    return bytes(data)


async def _embed_image(request: web.Request, image: bytes) -> tuple[str, NDArray[np.float32]]:
    try:
        return await request.app[DEPS].image_embeddings.embed(image)
    except EmbedError as error:
        if "cannot decode" in str(error):
            raise ApiError(400, f"not a readable image: {error}") from None
        raise ApiError(
            503, f"image embedding unavailable: {error}", headers={"Retry-After": "5"}
        ) from None
    except BusUnavailable:
        raise ApiError(503, "image embedding unavailable", headers={"Retry-After": "5"}) from None


async def _embed_of_upload(
    pool: asyncpg.Pool, upload_id: uuid.UUID, owner: str | None
) -> tuple[str, NDArray[np.float32], uuid.UUID]:
    row = await pool.fetchrow(
        """SELECT c.id, u.owner, e.model_id, e.embedding::text AS embedding
           FROM uploads u JOIN content c ON c.id = u.content_id
           LEFT JOIN embeddings e ON e.content_id = c.id
           WHERE u.id = $1 ORDER BY e.created_at DESC LIMIT 1""",
        upload_id,
    )
    if row is None or (owner is not None and row["owner"] != owner):
        raise ApiError(404, "object not found")
    if row["embedding"] is None:
        raise ApiError(409, "this object has no embedding (yet): it cannot be searched by")
    vector = np.asarray(orjson.loads(row["embedding"]), dtype=np.float32)
    return row["model_id"], vector, row["id"]


# The model's HNSW index is the only plan the search transaction allows (the planner would
# price a scan and sort of a small or filtered table lower, not counting its TOAST fetches),
# with pgvector's iterative scan so that a filter removing most neighbours still fills a page.
SEARCH_SETTINGS = (
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;"
    " SET LOCAL enable_sort = off; SET LOCAL hnsw.iterative_scan = relaxed_order;"
    " SET LOCAL hnsw.ef_search = 100"
)


def search_query(
    model_id: str,
    dim: int,
    vector: NDArray[np.float32],
    search: SearchRequest,
    exclude: uuid.UUID | None,
) -> tuple[str, list[Any]]:
    """The nearest-neighbour statement for a search and its arguments."""
    cast = f"vector({dim})" if dim <= 2000 else f"halfvec({dim})"
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
    distance = f"e.embedding::{cast} <=> $1::vector::{cast}"
    sql = f"""SELECT e.content_id, {distance} AS distance
              FROM embeddings e JOIN content c ON c.id = e.content_id
              WHERE {" AND ".join(conditions)}
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
    sql, args = search_query(model_id, 1, vector, search, None)
    # The same conditions as the vector search, without its ordering by the index.
    where = sql.split("WHERE", 1)[1].rsplit("ORDER BY", 1)[0]
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


def _merge(by_vector: list[Hit], by_text: list[Hit]) -> list[Hit]:
    """One list, best score first; a content found both ways counts as a text match."""
    merged = {h.content_id: h for h in by_vector}
    merged.update({h.content_id: h for h in by_text})
    return sorted(merged.values(), key=lambda h: -h.score)


async def _describe(
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

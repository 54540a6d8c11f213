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
from typing import Any

import numpy as np
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from numpy.typing import NDArray
from prometheus_client import Histogram
from pydantic import ValidationError

from common.embed_client import EmbedError, NoTextEncoder
from common.model_switch import active_model
from gateway.auth import bound_owner
from gateway.deps import DEPS
from gateway.errors import ApiError, invalid
from gateway.jsonbody import read_json
from gateway.repo import search as search_sql
from gateway.repo.scope import OwnerScope
from gateway.search_query import Hit, ImageSearch, SearchRequest, merge
from gateway.upload_rules import text_field

SEARCH_LATENCY = Histogram(
    "search_latency_seconds",
    "Time to answer a search, by kind of query.",
    ["query"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
for _query in ("text", "image", "like"):
    SEARCH_LATENCY.labels(_query)
MAX_BODY = 64 * 1024


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


async def handle_search_post(request: web.Request) -> web.Response:
    """A JSON search, or (multipart/form-data) a search by the image in the `image` part."""
    if request.content_type == "multipart/form-data":
        fields, image = await _read_image_search(request)
        return await _search(request, _parse(fields, ImageSearch), image)
    body = await read_json(request, MAX_BODY)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return await _search(request, _parse(body))


async def _search(
    request: web.Request,
    search: SearchRequest,
    by_image: bytes | None = None,
) -> web.Response:
    deps = request.app[DEPS]
    start = time.perf_counter()
    owner = bound_owner(request)
    if owner is not None:
        # A key bound to an owner searches that owner's uploads, whatever it asks for.
        if search.owner not in (None, owner):
            raise ApiError(403, "this key searches only its own owner's uploads")
        search = search.model_copy(update={"owner": owner})
    # The active model, as of now: a switch's flip changes it between two searches, never
    # within one (common/model_switch.py).
    active = await active_model(deps.pool)
    if active is None:
        raise ApiError(503, "no embedding model is registered yet", headers=_retry(request))
    model_id, dim = active
    exclude = None
    if by_image is not None:
        vector = await _embed_image(request, by_image, model_id)
    elif search.query is not None:
        vector = await _embed_text(request, search.query, model_id)
    else:
        assert search.like is not None
        vector, exclude = await _embed_of_upload(request, search.like, model_id)
    async with deps.pool.acquire() as conn:
        hits = await search_sql.nearest(conn, model_id, dim, vector, search, exclude)
        if search.query is not None:
            hits = merge(hits, await search_sql.text_matches(conn, model_id, vector, search))
        page = hits[search.offset : search.offset + search.limit]
        rows = await search_sql.describe(conn, page, OwnerScope(search.owner), OwnerScope(owner))
        results = _results(page, rows)
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


async def _embed_text(request: web.Request, text: str, model_id: str) -> NDArray[np.float32]:
    client = request.app[DEPS].text_embeddings
    try:
        vectors = await client.embed([text], model_id)
    except NoTextEncoder:
        raise ApiError(
            409, "text search is off: the embedding model has no text encoder; search with like="
        ) from None
    except EmbedError as error:  # BusUnavailable is answered by the request middleware
        raise ApiError(
            503, f"text embedding unavailable: {error}", headers=_retry(request)
        ) from None
    vector: NDArray[np.float32] = vectors[0]
    return vector


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
                value = text_field(await _read_limited(part, 2000, part.name), part.name)
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


async def _embed_image(request: web.Request, image: bytes, model_id: str) -> NDArray[np.float32]:
    try:
        return await request.app[DEPS].image_embeddings.embed(image, model_id)
    except EmbedError as error:
        if "cannot decode" in str(error):
            raise ApiError(400, f"not a readable image: {error}") from None
        raise ApiError(
            503, f"image embedding unavailable: {error}", headers=_retry(request)
        ) from None


def _retry(request: web.Request) -> dict[str, str]:
    return {"Retry-After": str(request.app[DEPS].settings.retry_after_seconds)}


async def _embed_of_upload(
    request: web.Request, upload_id: uuid.UUID, model_id: str
) -> tuple[NDArray[np.float32], uuid.UUID]:
    scope = OwnerScope(bound_owner(request))
    found = await search_sql.embedding_of_upload(request.app[DEPS].pool, scope, upload_id, model_id)
    if found is None:
        raise ApiError(404, "object not found")
    content_id, vector = found
    if vector is None:
        raise ApiError(409, "this object has no embedding (yet): it cannot be searched by")
    return vector, content_id


def _results(hits: list[Hit], rows: list[Any]) -> list[dict[str, Any]]:
    """The page's hits as the API shows them, best first (a hit with no row is left out)."""
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

"""The SQL of search: nearest neighbours (pgvector), visible text, and the hits described.

The HTTP side is gateway/search.py and the request model gateway/search_query.py;
bench/search.py runs these same statements. A search's `owner` (forced to the key's owner
for a bound key) is its owner scope: only content the owner holds an upload of is found, and
each hit is shown through the owner's earliest upload of it.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import numpy as np
import orjson
from numpy.typing import NDArray

from common.vectors import model_literal
from gateway.repo.clusters import cluster_name
from gateway.repo.scope import OwnerScope, Statement
from gateway.search_query import Hit, SearchRequest

# The model's HNSW index is the only plan the search transaction allows (the planner would
# price a scan and sort of a small or filtered table lower, not counting its TOAST fetches),
# with pgvector's iterative scan so that a filter removing most neighbours still fills a page.
SEARCH_SETTINGS = (
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;"
    " SET LOCAL enable_sort = off; SET LOCAL hnsw.iterative_scan = relaxed_order;"
    " SET LOCAL hnsw.ef_search = 100"
)


def _filters(
    model_id: str,
    vector: NDArray[np.float32],
    search: SearchRequest,
    scope: OwnerScope,
    exclude: uuid.UUID | None,
) -> tuple[str, Statement]:
    """The WHERE clause every kind of search shares, and its arguments ($1 is the query
    vector, $2 the number of rows wanted)."""
    q = Statement()
    q.param(vector)
    q.param(search.offset + search.limit + 1)
    conditions = [f"e.model_id = {model_literal(model_id)}", "c.stage <> 'failed'"]
    if search.kind:
        conditions.append(f"c.kind = {q.param(search.kind)}")
    if search.cluster_id:
        conditions.append(f"c.cluster_id = {q.param(search.cluster_id)}")
    if search.tags:
        op = "&&" if search.tags_mode == "any" else "@>"
        conditions.append(f"c.tags {op} {q.param(search.tags, 'text[]')}")
    if search.uploaded_after or search.uploaded_before:
        made = ["du.content_id = c.id", scope.owns(q, "du.owner")]
        if search.uploaded_after:
            made.append(f"du.created_at >= {q.param(search.uploaded_after)}")
        if search.uploaded_before:
            made.append(f"du.created_at < {q.param(search.uploaded_before)}")
        conditions.append(f"EXISTS (SELECT FROM uploads du WHERE {' AND '.join(made)})")
    if scope.bound:
        conditions.append(scope.holds_content(q, "c.id"))
    else:  # content whose last upload was deleted is gone from search before it is purged
        conditions.append("EXISTS (SELECT FROM uploads su WHERE su.content_id = c.id)")
    if exclude:
        conditions.append(f"c.id <> {q.param(exclude)}")
    return " AND ".join(conditions), q


def search_query(
    model_id: str,
    dim: int,
    vector: NDArray[np.float32],
    search: SearchRequest,
    exclude: uuid.UUID | None,
) -> tuple[str, list[Any]]:
    """The nearest-neighbour statement for a search and its arguments."""
    cast = f"vector({dim})" if dim <= 2000 else f"halfvec({dim})"
    where, q = _filters(model_id, vector, search, OwnerScope(search.owner), exclude)
    distance = f"e.embedding::{cast} <=> $1::vector::{cast}"
    sql = f"""SELECT e.content_id, {distance} AS distance
              FROM embeddings e JOIN content c ON c.id = e.content_id
              WHERE {where}
              ORDER BY {distance} LIMIT $2"""
    return sql, q.args


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
    where, q = _filters(model_id, vector, search, OwnerScope(search.owner), None)
    words = f"plainto_tsquery('simple', {q.param(search.query)})"
    rows = await conn.fetch(
        f"""SELECT e.content_id, 1 - (e.embedding <=> $1::vector) AS similarity
            FROM embeddings e JOIN content c ON c.id = e.content_id
            WHERE {where} AND c.visible_text @@ {words}
            ORDER BY ts_rank(c.visible_text, {words}) DESC
            LIMIT $2""",
        *q.args,
    )
    hits = [Hit(r["content_id"], float(r["similarity"]), text_match=True) for r in rows]
    return [h for h in hits if h.score >= search.threshold]


async def describe(
    conn: asyncpg.Connection, hits: list[Hit], scope: OwnerScope, viewer: OwnerScope
) -> list[asyncpg.Record]:
    """The hits' content, each through its earliest upload in `scope` (the search's owner),
    with its cluster's name as `viewer` (the key's owner scope) sees it."""
    if not hits:
        return []
    q = Statement()
    ids = q.param([h.content_id for h in hits], "uuid[]")
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""SELECT c.id, c.kind, c.tags, c.cluster_id,
                   {cluster_name(q, viewer, "c.cluster_id")} AS cluster_name, c.thumbnail_key,
                   c.mime_type, u.id AS upload_id, u.filename, u.owner
            FROM content c
            CROSS JOIN LATERAL (
                SELECT su.id, su.filename, su.owner FROM uploads su
                WHERE su.content_id = c.id AND {scope.owns(q, "su.owner")}
                ORDER BY su.created_at, su.id LIMIT 1
            ) u
            WHERE c.id = ANY({ids})""",
        *q.args,
    )
    return rows


async def embedding_of_upload(
    pool: asyncpg.Pool, scope: OwnerScope, upload_id: uuid.UUID, model_id: str
) -> tuple[uuid.UUID, NDArray[np.float32] | None] | None:
    """(content id, vector) of an upload's embedding by the model (None until it has one);
    None when the upload is unknown or not the scope's."""
    q = Statement()
    row = await pool.fetchrow(
        f"""SELECT c.id, e.embedding::text AS embedding
            FROM uploads u JOIN content c ON c.id = u.content_id
            LEFT JOIN embeddings e ON e.content_id = c.id AND e.model_id = {q.param(model_id)}
            WHERE u.id = {q.param(upload_id)} AND {scope.owns(q, "u.owner")}""",
        *q.args,
    )
    if row is None:
        return None
    if row["embedding"] is None:
        return row["id"], None
    return row["id"], np.asarray(orjson.loads(row["embedding"]), dtype=np.float32)

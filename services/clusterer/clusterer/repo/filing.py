"""Filing content: the model, nearest centroids, atomic joins, the serialised create path."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import orjson
from numpy.typing import NDArray

from clusterer.logic import Candidate
from clusterer.repo.audit import audit
from common.calibration import Calibration
from common.vectors import as_array, model_literal


class ClusterGone(Exception):
    """The chosen cluster was merged away or rejected meanwhile: choose again."""


class AlreadyFiled(Exception):
    """The content left the `embedded` stage meanwhile (another delivery filed it)."""


@dataclass(frozen=True)
class Model:
    """An embedding model as the clusterer needs it: SQL fragments and its thresholds."""

    model_id: str
    dim: int
    calibration: Calibration

    def threshold_for(self, members: int) -> float:
        return self.calibration.threshold_for(members)

    @property
    def literal(self) -> str:
        # Inlined, not a parameter, so that the planner can match the model's partial index.
        return model_literal(self.model_id)

    @property
    def cast(self) -> str:
        return f"vector({self.dim})" if self.dim <= 2000 else f"halfvec({self.dim})"


@dataclass(frozen=True)
class ContentToFile:
    id: uuid.UUID
    stage: str
    cluster_id: uuid.UUID | None
    first_job_id: uuid.UUID
    kind: str
    near_duplicate_of: uuid.UUID | None
    embedding: NDArray[np.float32] | None


async def model(conn: asyncpg.Connection | asyncpg.Pool, model_id: str) -> dict[str, Any] | None:
    """The model's row (id, dim, cluster_threshold, calibration as a dict); None if unknown."""
    row = await conn.fetchrow(
        "SELECT id, dim, cluster_threshold, calibration::text AS calibration"
        " FROM models WHERE id = $1",
        model_id,
    )
    if row is None:
        return None
    values = dict(row)
    values["calibration"] = orjson.loads(row["calibration"]) if row["calibration"] else None
    return values


async def content_to_file(
    conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID, model_id: str
) -> ContentToFile | None:
    """The content with its embedding of this model; None if there is no such content."""
    row = await conn.fetchrow(
        """SELECT c.id, c.stage, c.cluster_id, c.first_job_id, c.kind, c.near_duplicate_of,
                  e.embedding
           FROM content c
           LEFT JOIN embeddings e ON e.content_id = c.id AND e.model_id = $2
           WHERE c.id = $1""",
        content_id,
        model_id,
    )
    if row is None:
        return None
    values = dict(row)
    values["embedding"] = as_array(values["embedding"])
    return ContentToFile(**values)


async def standby_cluster_of(
    conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID, model_id: str
) -> uuid.UUID | None:
    """The standby cluster of the model that holds the content, if it is filed there."""
    cluster_id: uuid.UUID | None = await conn.fetchval(
        "SELECT cluster_id FROM standby_members WHERE content_id = $1 AND model_id = $2",
        content_id,
        model_id,
    )
    return cluster_id


async def content_stage(
    conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID
) -> str | None:
    """The content's stage; None if there is no such content."""
    stage: str | None = await conn.fetchval("SELECT stage FROM content WHERE id = $1", content_id)
    return stage


async def origin_trace(
    conn: asyncpg.Connection | asyncpg.Pool, content_id: uuid.UUID
) -> asyncpg.Record | None:
    """The trace and span of the request that first stored the content (trace_id, span_id)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """SELECT j.trace_id, j.span_id FROM content c JOIN jobs j ON j.id = c.first_job_id
           WHERE c.id = $1""",
        content_id,
    )
    return row


# The search key (`centroid`, in the model's HNSW index) is refreshed when the exact direction
# (`centroid_sum`) has moved more than this cosine distance from it: re-indexing a 512-d
# vector on every join costs more than the rest of the join together.
SEARCH_KEY_DRIFT = 1e-3


async def nearest(
    conn: asyncpg.Connection,
    model: Model,
    vector: NDArray[np.float32],
    *,
    limit: int = 5,
    exact: bool = False,
) -> list[Candidate]:
    """The clusters nearest to a vector, with their exact similarity (to the centroid sum)
    and threshold (their own, else the model's for their size).

    Candidates come from the model's HNSW index on the search key and are re-ranked exactly;
    the exact form scans every cluster of the model, for the serialised create path, where a
    cluster the approximate search missed would become a duplicate.
    """
    if exact:
        # The distance is computed once per row (each use of a TOASTed vector fetches it).
        sql = f"""SELECT id, threshold, member_count, 1 - distance AS similarity FROM (
                      SELECT id, threshold, member_count, centroid_sum <=> $1::vector AS distance
                      FROM clusters
                      WHERE model_id = {model.literal} AND centroid_sum IS NOT NULL
                      ORDER BY distance LIMIT $2
                  ) AS nearest"""
    else:
        sql = f"""SELECT id, threshold, member_count,
                         1 - (centroid_sum <=> $1::vector) AS similarity FROM (
                      SELECT id, threshold, member_count, centroid_sum
                      FROM clusters WHERE model_id = {model.literal} AND centroid IS NOT NULL
                      ORDER BY centroid::{model.cast} <=> $1::vector::{model.cast} LIMIT $2
                  ) AS candidates"""
    rows = await conn.fetch(sql, vector, limit)
    return [
        Candidate(
            r["id"],
            float(r["similarity"]),
            float(r["threshold"])
            if r["threshold"] is not None
            else model.threshold_for(r["member_count"]),
        )
        for r in rows
    ]


async def cluster_of_original(
    conn: asyncpg.Connection,
    model: Model,
    original: uuid.UUID,
    vector: NDArray[np.float32],
    standby: bool = False,
) -> Candidate | None:
    """The cluster of this model that holds the content a near-duplicate was found to copy
    (with the copy's exact similarity to it); None while the original is not filed there."""
    membership, match = (
        ("standby_members", f"c.content_id = $1 AND c.model_id = {model.literal}")
        if standby
        else ("content", "c.id = $1")
    )
    row = await conn.fetchrow(
        f"""SELECT cl.id, 1 - (cl.centroid_sum <=> $2::vector) AS similarity
            FROM {membership} c JOIN clusters cl ON cl.id = c.cluster_id
            WHERE {match} AND cl.model_id = {model.literal}""",
        original,
        vector,
    )
    if row is None:
        return None
    # A copy joins its original whatever the threshold: it is the same picture.
    return Candidate(row["id"], float(row["similarity"]), -1.0)


async def prefer_index(conn: asyncpg.Connection) -> None:
    """Steer this transaction's nearest-centroid query to the HNSW index.

    pgvector prices the HNSW scan above scanning every cluster of the model (by sequential or
    bitmap scan) and sorting, because the planner does not count fetching each out-of-line
    (TOASTed) vector: at 10,000 clusters that scan takes ~27 ms where the index takes ~1 ms.
    With these off, only the index can deliver the order, so it is the plan.
    """
    await conn.execute(
        "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;"
        " SET LOCAL enable_sort = off"
    )


async def lock_create_path(conn: asyncpg.Connection, model_id: str) -> None:
    """Serialise opening clusters for one model (held until the transaction ends)."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('mammothbox.cluster-create:' || $1, 0))",
        model_id,
    )


_FILE_ACTIVE = """UPDATE content SET cluster_id = $2, stage = 'clustered',
                          stage_updated_at = now(), error = NULL
                      WHERE id = $1 AND stage = 'embedded' RETURNING 1"""
# A model switch's standby clusters (clusterer/standby.py): membership on the side.
_FILE_STANDBY = """INSERT INTO standby_members (content_id, model_id, cluster_id)
                   SELECT $1, model_id, id FROM clusters WHERE id = $2
                   ON CONFLICT DO NOTHING RETURNING 1"""


async def _file_content(
    conn: asyncpg.Connection, content_id: uuid.UUID, cluster_id: uuid.UUID, standby: bool
) -> None:
    filed = await conn.fetchval(_FILE_STANDBY if standby else _FILE_ACTIVE, content_id, cluster_id)
    if not filed:
        raise AlreadyFiled(str(content_id))


# One statement, so a join is one round trip inside its transaction: the cluster's sum and
# count, the content's stage CAS (only if the cluster still exists) and the audit row; for a
# standby cluster, its membership row instead (not audited: a backfill is not a decision).
_ADD_TO_SUM = """
WITH cl AS (
    UPDATE clusters
    SET centroid_sum = centroid_sum + $2::vector,
        centroid = CASE WHEN centroid <=> (centroid_sum + $2::vector) > $3
                        THEN l2_normalize(centroid_sum + $2::vector)
                        ELSE centroid END,
        member_count = member_count + 1, updated_at = now()
    WHERE id = $1
    RETURNING id, model_id
)"""
_FOUND_FILED = """
SELECT EXISTS (SELECT 1 FROM cl) AS cluster_found, EXISTS (SELECT 1 FROM filed) AS filed
"""
_JOIN_STANDBY_SQL = (
    _ADD_TO_SUM
    + """, filed AS (
    INSERT INTO standby_members (content_id, model_id, cluster_id)
    SELECT $4, cl.model_id, cl.id FROM cl
    ON CONFLICT DO NOTHING
    RETURNING content_id
)"""
    + _FOUND_FILED
)
_JOIN_SQL = (
    _ADD_TO_SUM
    + """, filed AS (
    UPDATE content SET cluster_id = $1, stage = 'clustered', stage_updated_at = now(),
                       error = NULL
    WHERE id = $4 AND stage = 'embedded' AND EXISTS (SELECT 1 FROM cl)
    RETURNING id
), audit AS (
    INSERT INTO audit_log (actor, action, entity, entity_id, details)
    SELECT 'clusterer', 'cluster.join', 'content', id::text, $5::text::jsonb FROM filed
)"""
    + _FOUND_FILED
)


async def join(
    conn: asyncpg.Connection,
    cluster_id: uuid.UUID,
    content_id: uuid.UUID,
    vector: NDArray[np.float32],
    similarity: float,
    standby: bool = False,
) -> None:
    """Add the content to the cluster: sum and count in one row update, the content's CAS.

    Run inside a transaction (a failed CAS raises, and the rollback undoes the sum). The row
    lock makes concurrent joins queue rather than lose updates; the sum's direction is the
    exact mean direction. The search key follows it within SEARCH_KEY_DRIFT (an unchanged key
    keeps the update HOT: no index insert).
    """
    details = orjson.dumps({"cluster_id": str(cluster_id), "similarity": round(similarity, 6)})
    args = (cluster_id, vector, SEARCH_KEY_DRIFT, content_id)
    if standby:
        row = await conn.fetchrow(_JOIN_STANDBY_SQL, *args)
    else:
        row = await conn.fetchrow(_JOIN_SQL, *args, details.decode())
    assert row is not None
    if not row["cluster_found"]:
        raise ClusterGone(str(cluster_id))
    if not row["filed"]:
        raise AlreadyFiled(str(content_id))


async def create(
    conn: asyncpg.Connection,
    cluster_id: uuid.UUID,
    model: Model,
    name: str,
    content_id: uuid.UUID,
    vector: NDArray[np.float32],
    standby: bool = False,
) -> None:
    """Open a provisional cluster holding this one content (inside the create lock); its
    threshold follows the model's."""
    await conn.execute(
        """INSERT INTO clusters (id, model_id, name, name_source, provisional,
                                 centroid_sum, centroid, member_count)
           VALUES ($1, $2, $3, 'placeholder', true, $4::vector, l2_normalize($4::vector), 1)""",
        cluster_id,
        model.model_id,
        name,
        vector,
    )
    await _file_content(conn, content_id, cluster_id, standby)
    if standby:
        return
    await audit(
        conn,
        "clusterer",
        "cluster.create",
        "cluster",
        cluster_id,
        {"name": name, "first_member": str(content_id), "threshold": model.threshold_for(1)},
    )

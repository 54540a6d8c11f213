"""Embedding models and their indexes: one partial expression HNSW index per model.

The `embedding` columns have no fixed dimension, so vectors of several models live side by
side; each model's rows are indexed through a cast to its own dimension. Queries use the same
expression (`embedding::vector(dim)`) and `model_id = ...` so the planner picks that index.
"""

from __future__ import annotations

import hashlib
import re

import asyncpg
import numpy as np
from numpy.typing import NDArray

_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")


# Held while the active model or the live switch changes (common/model_switch.py).
MODELS_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('mammothbox.models', 0))"
# Taken by whoever files by a model's role: a flip, drop or cancel (MODELS_LOCK) waits for it.
MODELS_SHARED_LOCK = "SELECT pg_advisory_xact_lock_shared(hashtextextended('mammothbox.models', 0))"


class ModelMismatch(ValueError):
    """A model id is already registered with another dimension."""


def model_literal(model_id: str) -> str:
    """A validated model id as an SQL string literal, to inline where a partial index applies.

    Partial indexes are matched at plan time, so `model_id = $1` in a prepared statement
    (a generic plan) cannot use them; the regex admits no quote or backslash.
    """
    if not _MODEL_ID.match(model_id):
        raise ValueError(f"invalid model id: {model_id!r}")
    return f"'{model_id}'"


def as_array(value: object) -> NDArray[np.float32] | None:
    """A vector column's value (pgvector's Vector, a list, or None) as float32 NumPy."""
    if value is None:
        return None
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else value, dtype=np.float32)


def unit_rows(values: list[object]) -> NDArray[np.float32]:
    """Vector column values (None left out) as rows of unit float32 vectors; (0, 0) if none."""
    found = [v for value in values if (v := as_array(value)) is not None]
    if not found:
        return np.zeros((0, 0), dtype=np.float32)
    vectors = np.stack(found)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: NDArray[np.float32] = (vectors / np.where(norms > 0, norms, 1)).astype(np.float32)
    return unit


def index_name(table: str, model_id: str) -> str:
    """A stable, valid identifier for a model's index on a table."""
    slug = re.sub(r"[^a-z0-9]+", "_", model_id.lower()).strip("_")[:30]
    digest = hashlib.sha256(model_id.encode()).hexdigest()[:8]
    return f"{table}_hnsw_{slug}_{digest}"


async def register_model(
    conn: asyncpg.Connection, model_id: str, dim: int, cluster_threshold: float | None = None
) -> None:
    """Record a model (and its manifest's cluster threshold); create its vector indexes.

    The first model registered becomes the active one (common/model_switch.py); another one
    becomes active only through a switch."""
    if not _MODEL_ID.match(model_id):
        raise ValueError(f"invalid model id: {model_id!r}")
    if not 0 < dim <= 16000:
        raise ValueError(f"invalid dimension {dim}")
    existing = await conn.fetchval(
        "INSERT INTO models (id, dim) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET id = models.id"
        " RETURNING dim",
        model_id,
        dim,
    )
    if existing != dim:
        raise ModelMismatch(f"model {model_id} is registered with dimension {existing}, not {dim}")
    async with conn.transaction():
        await conn.execute(MODELS_LOCK)
        await conn.execute(
            "UPDATE models SET active = true WHERE id = $1"
            " AND NOT EXISTS (SELECT FROM models WHERE active)",
            model_id,
        )
    await conn.execute(
        "UPDATE models SET cluster_threshold = $2 WHERE id = $1 AND"
        " cluster_threshold IS DISTINCT FROM $2",
        model_id,
        cluster_threshold,
    )
    literal = model_id.replace("'", "''")  # the regex above already excludes quotes
    # HNSW indexes at most 2,000 dimensions of `vector`; larger models use halfvec (4,000).
    cast = f"vector({dim})" if dim <= 2000 else f"halfvec({dim})"
    ops = "vector_cosine_ops" if dim <= 2000 else "halfvec_cosine_ops"
    for table, column in (("embeddings", "embedding"), ("clusters", "centroid")):
        await conn.execute(
            f"CREATE INDEX IF NOT EXISTS {index_name(table, model_id)} ON {table} "
            f"USING hnsw (({column}::{cast}) {ops}) WHERE model_id = '{literal}'"
        )

"""How a cluster is read and shown, shared by the gateway (reads) and the clusterer (commands)."""

from __future__ import annotations

from typing import Any

CLUSTER_COLUMNS = (
    "id, model_id, name, name_source, provisional, threshold, member_count, created_at, updated_at"
)


def cluster_json(row: Any) -> dict[str, Any]:
    """A cluster row as the API shows it."""
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "name_source": row["name_source"],
        "provisional": row["provisional"],
        # Six significant digits hide the `real` column's noise (0.72 reads back 0.7200000286)
        # without rounding a tiny threshold to 0.
        "threshold": float(f"{row['threshold']:.6g}"),
        "member_count": row["member_count"],
        "model_id": row["model_id"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }

"""How a cluster is read and shown, shared by the gateway (reads) and the clusterer (commands)."""

from __future__ import annotations

from typing import Any

import orjson

from common.calibration import joining_threshold


def threshold_columns(table: str = "") -> str:
    """A cluster's own threshold and its model's calibration (see `cluster_json`), as
    `threshold, model_calibration`; `table` qualifies the columns (`"cl."`)."""
    return (
        f"{table}threshold, (SELECT m.calibration::text FROM models m"
        f" WHERE m.id = {table}model_id) AS model_calibration"
    )


CLUSTER_COLUMNS = (
    f"id, model_id, name, name_source, provisional, {threshold_columns()}, member_count,"
    " created_at, updated_at"
)


def cluster_json(row: Any) -> dict[str, Any]:
    """A cluster row as the API shows it."""
    calibration = row["model_calibration"]
    threshold = joining_threshold(
        row["threshold"], orjson.loads(calibration) if calibration else None, row["member_count"]
    )
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "name_source": row["name_source"],
        "provisional": row["provisional"],
        # Six significant digits hide the `real` column's noise (0.72 reads back 0.7200000286)
        # without rounding a tiny threshold to 0.
        "threshold": None if threshold is None else float(f"{threshold:.6g}"),
        # "cluster": an admin set it; "model": it follows the model's calibration and size.
        "threshold_source": "model" if row["threshold"] is None else "cluster",
        "member_count": row["member_count"],
        "model_id": row["model_id"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


PROPOSAL_COLUMNS = (
    "id, run_id, model_id, kind, cluster_ids, plan::text AS plan, reason, gain, status,"
    " created_at, decided_at, decided_by"
)


def proposal_json(row: Any) -> dict[str, Any]:
    """A proposal row as the API shows it."""
    return {
        "id": str(row["id"]),
        "run_id": str(row["run_id"]),
        "model_id": row["model_id"],
        "kind": row["kind"],
        "cluster_ids": [str(c) for c in row["cluster_ids"]],
        "plan": orjson.loads(row["plan"]),
        "reason": row["reason"],
        "gain": round(float(row["gain"]), 4),
        "status": row["status"],
        "created_at": row["created_at"].isoformat(),
        "decided_at": row["decided_at"].isoformat() if row["decided_at"] else None,
        "decided_by": row["decided_by"],
    }

"""The shapes the original MammothBox shipped as samples, each through gateway and schemer:
the decision, its reasons, the DDL, and after approval rows that read back as the input."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from tests.integration.conftest import Gateway
from tests.schemer.conftest import decide, ingest, read_documents, schema_of, wait_job

rng = random.Random(14)
CITIES = ["Oslo", "Lima", "Pune", "Accra", "Quito"]


def users() -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "name": f"User {i}",
            "email": f"user{i}@example.com",
            "age": rng.randint(18, 90),
            "active": rng.random() < 0.5,
            "signed_up": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T08:30:00+00:00",
            "address": {"city": rng.choice(CITIES), "zip": f"{rng.randint(1000, 9999)}"},
            "tags": rng.sample(["new", "vip", "beta", "staff"], rng.randint(0, 3)),
        }
        for i in range(40)
    ]


def orders() -> list[dict[str, Any]]:
    return [
        {
            "order_id": f"o-{i:05d}",
            "customer": {"id": rng.randint(1, 500), "name": f"Customer {i % 17}"},
            "placed_at": f"2024-05-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:15:00+00:00",
            "items": [
                {"sku": f"sku-{rng.randint(1, 99)}", "qty": rng.randint(1, 5), "price": 9.99}
                for _ in range(rng.randint(1, 4))
            ],
            "total": round(rng.uniform(5, 500), 2),
            "status": rng.choice(["paid", "shipped", "returned"]),
        }
        for i in range(40)
    ]


def sensors() -> list[dict[str, Any]]:
    return [
        {
            "sensor_id": f"s-{i % 6}",
            "ts": f"2024-07-01T12:{i % 60:02d}:{rng.randint(0, 59):02d}+00:00",
            # Mostly fractional readings, some whole: one column of double precision.
            "temperature": rng.choice([21, 22]) if i % 7 == 0 else round(rng.uniform(15, 30), 2),
            "humidity": round(rng.uniform(0.2, 0.9), 3),
            "battery": rng.randint(0, 100),
        }
        for i in range(60)
    ]


def events() -> list[dict[str, Any]]:
    optional = ["user", "session", "page", "referrer", "device", "country", "latency", "retry"]
    docs = []
    for i in range(60):
        doc: dict[str, Any] = {"event": rng.choice(["click", "view", "error"]), "at": i}
        for key in rng.sample(optional, rng.randint(0, 3)):
            doc[key] = f"{key}-{rng.randint(1, 9)}"
        # The same key is sometimes a number and sometimes a string.
        doc["value"] = rng.randint(1, 100) if i % 2 else f"v{i}"
        docs.append(doc)
    return docs


def configs() -> list[dict[str, Any]]:
    def deep(level: int, i: int) -> Any:
        if level == 6:
            return {"value": i, "enabled": i % 2 == 0}
        return {f"level{level}": deep(level + 1, i), "name": f"n{level}"}

    return [{"service": f"svc-{i}", "settings": deep(1, i)} for i in range(10)]


def wide() -> list[dict[str, Any]]:
    return [{f"metric_{k:03d}": rng.randint(0, 1000) for k in range(300)} for _ in range(8)]


def same_document(stored: dict[str, Any], original: dict[str, Any]) -> bool:
    """Equal, timestamps compared as instants (a timestamptz column keeps the instant)."""
    if stored.keys() != original.keys():
        return False
    for key, value in original.items():
        back = stored[key]
        if isinstance(value, dict):
            if not isinstance(back, dict) or not same_document(back, value):
                return False
        elif isinstance(value, str) and value[:4].isdigit() and "T" in value:
            if datetime.fromisoformat(back) != datetime.fromisoformat(value):
                return False
        elif back != value:
            return False
    return True


SHAPES = {
    # name: (documents, storage, words expected in the reasons, DDL fragments)
    "users": (
        users,
        "table",
        ["same", "one type"],
        ["age bigint", "signed_up timestamptz", "address__city text", "tags text[]"],
    ),
    "orders": (
        orders,
        "table",
        ["lists of objects", "jsonb column"],
        ["items jsonb", "total double precision", "customer__name text"],
    ),
    "sensors": (
        sensors,
        "table",
        ["one type"],
        ["ts timestamptz", "temperature double precision", "battery bigint"],
    ),
    "events": (events, "jsonb", ["keys come and go", "types change", "'value'"], ["gin"]),
    "configs": (configs, "jsonb", ["levels deep", "SCHEMA_MAX_DEPTH"], ["jsonb_path_ops"]),
    "wide": (wide, "jsonb", ["300 top-level keys"], ["document jsonb"]),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_shape_gets_its_decision_reasons_ddl_and_rows_when_approved(
    shape: str, gateway: Gateway, start_schemer: Any, db: asyncpg.Connection
) -> None:
    make, storage, words, ddl_parts = SHAPES[shape]
    documents = make()
    async with start_schemer():
        job = await ingest(gateway, documents, owner="user")
        status = await wait_job(gateway, job["job_id"])
        assert status["status"] == "done", status
        [summary] = (await (await gateway.client.get("/api/v1/schemas")).json())["schemas"]
        detail = await schema_of(gateway, summary["id"])
        decision = detail["decision"]
        assert detail["storage"] == storage, decision["reasons"]
        reasons = " ".join(decision["reasons"])
        for word in words:
            assert word in reasons, (word, decision["reasons"])
        assert 0 < decision["confidence"] <= 1 and decision["confidence_words"]
        for part in ddl_parts:
            assert part in detail["proposed_ddl"], (part, detail["proposed_ddl"])
        assert detail["json_schema"]["type"] == "object"
        assert detail["document_count"] == len(documents)
        approved = await decide(gateway, summary["id"], "approve")
        assert approved["staged"] == 0 and approved["table"]
        back = await read_documents(gateway, summary["name"])
        assert len(back) == len(documents)
        by_upload = {d["system_id"]: d["document"] for d in back}
        for upload_id, original in zip(job["system_ids"], documents, strict=True):
            assert same_document(by_upload[upload_id], original), (by_upload[upload_id], original)
        if storage == "table":
            assert await db.fetchval("SELECT count(*) FROM json_documents WHERE overflow") == 0

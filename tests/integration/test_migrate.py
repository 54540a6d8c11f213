"""Migrations: recorded, idempotent, safe when run at once; vectors of several dimensions."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid

import asyncpg
import pytest

from common.migrate import load_migrations, migrate
from common.stages import Stage
from common.vectors import ModelMismatch, index_name, register_model
from tests.conftest import DATABASE_URL, _admin, _with_db


@pytest.fixture
async def empty_database() -> object:
    name = f"mb_m_{uuid.uuid4().hex[:12]}"
    conn = await _admin()
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    yield _with_db(DATABASE_URL, name)
    conn = await _admin()
    await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await conn.close()


async def test_migrate_is_safe_when_run_by_several_processes_at_once(empty_database: str) -> None:
    env = {**os.environ, "DATABASE_URL": empty_database, "LOG_LEVEL": "WARNING"}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "scripts/migrate.py",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    applied = sorted(out.decode() for out, _ in outputs)
    assert sum("migrations applied: 0" in a for a in applied) == 2
    conn = await asyncpg.connect(empty_database)
    try:
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == [m.version for m in load_migrations()]
    finally:
        await conn.close()
    assert await migrate(empty_database) == []


async def test_register_model_indexes_each_dimension_when_two_models_coexist(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await register_model(conn, "clip-vit-b32", 512)
        await register_model(conn, "efficientnet-lite2", 1280)
        await register_model(conn, "clip-vit-b32", 512)  # idempotent
        with pytest.raises(ModelMismatch):
            await register_model(conn, "clip-vit-b32", 768)
        job, content = uuid.uuid4(), []
        await conn.execute("INSERT INTO jobs (id, owner, request_id) VALUES ($1, 'o', 'r')", job)
        for model, dim in (("clip-vit-b32", 512), ("efficientnet-lite2", 1280)):
            for i in range(3):
                cid = uuid.uuid4()
                content.append(cid)
                await conn.execute(
                    """INSERT INTO content (id, sha256, kind, mime_type, size_bytes, storage_key,
                                            first_job_id)
                       VALUES ($1, $2, 'image', 'image/png', 1, 'k', $3)""",
                    cid,
                    uuid.uuid4().hex * 2,
                    job,
                )
                vector = "[" + ",".join(["0"] * (dim - 1) + [str(i + 1)]) + "]"
                await conn.execute(
                    "INSERT INTO embeddings (content_id, model_id, embedding)"
                    " VALUES ($1, $2, $3::vector)",
                    cid,
                    model,
                    vector,
                )
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN SELECT content_id FROM embeddings WHERE model_id = 'efficientnet-lite2'"
                " ORDER BY embedding::vector(1280) <=> $1::vector(1280) LIMIT 2",
                "[" + ",".join(["1"] * 1280) + "]",
            )
        )
        assert index_name("embeddings", "efficientnet-lite2") in plan
    finally:
        await conn.close()


def test_migrate_script_creates_database_when_missing() -> None:
    name = f"mb_c_{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "DATABASE_URL": _with_db(DATABASE_URL, name), "LOG_LEVEL": "WARNING"}
    try:
        result = subprocess.run(
            [sys.executable, "scripts/migrate.py", "--create-database"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert f"migrations applied: {len(load_migrations())}" in result.stdout
    finally:

        async def drop() -> None:
            conn = await _admin()
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await conn.close()

        asyncio.run(drop())


async def test_content_stages_are_exactly_the_enum_when_migrated(db: asyncpg.Connection) -> None:
    check = await db.fetchval(
        """SELECT pg_get_constraintdef(oid) FROM pg_constraint
           WHERE conrelid = 'content'::regclass AND contype = 'c'
             AND pg_get_constraintdef(oid) LIKE '%stage%'"""
    )
    allowed = set(re.findall(r"'(\w+)'::text", check))
    assert allowed == {stage.value for stage in Stage}

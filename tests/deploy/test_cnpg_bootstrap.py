"""The Kubernetes database, as CloudNativePG makes it, against a real PostgreSQL with pgvector:
a database owned by an ordinary login role (initdb's `owner`), the Cluster's
postInitApplicationSQL run in it as the superuser, then the migrations as the owner, which is
how the services' init container runs them. pgvector is not a trusted extension and the owner
may not create roles, so without that SQL the migrations could not make the schema."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from common.migrate import load_migrations, migrate
from tests.conftest import DATABASE_URL
from tests.deploy.tools import objects


def url_as(user: str, database: str) -> str:
    parts = urlsplit(DATABASE_URL)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}", path=f"/{database}"))


def admin_url(database: str) -> str:
    return urlunsplit(urlsplit(DATABASE_URL)._replace(path=f"/{database}"))


@pytest.fixture
async def owned_database() -> AsyncIterator[tuple[str, str]]:
    """(owner, database): a fresh database owned by a login role without any privilege."""
    suffix = uuid.uuid4().hex[:10]
    owner, database = f"mb_owner_{suffix}", f"mb_cnpg_{suffix}"
    admin = await asyncpg.connect(admin_url("postgres"))
    try:
        await admin.execute(f"CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
        await admin.execute(f"CREATE DATABASE {database} OWNER {owner}")
        yield owner, database
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {owner}")
        await admin.close()


def bootstrap(owner: str) -> tuple[str, list[str]]:
    """The owner the Cluster names, and its postInitApplicationSQL for `owner` instead."""
    initdb = objects("prod", "Cluster")["mammothbox-db"]["spec"]["bootstrap"]["initdb"]
    named = initdb["owner"]
    statements = [
        re.sub(rf"\b{re.escape(named)}\b", owner, sql) for sql in initdb["postInitApplicationSQL"]
    ]
    return named, statements


async def test_migrations_run_as_the_owner_after_the_clusters_bootstrap_sql(
    owned_database: tuple[str, str],
) -> None:
    owner, database = owned_database
    named, statements = bootstrap(owner)
    assert named == "mammothbox"
    superuser = await asyncpg.connect(admin_url(database))
    try:
        # The schemer's role is cluster-wide: another test database on this server may have
        # made it already. A new CloudNativePG cluster has none, and makes it here.
        exists = await superuser.fetchval(
            "SELECT 1 FROM pg_roles WHERE rolname = 'mammoth_schemer'"
        )
        for sql in statements:
            if exists and sql.startswith("CREATE ROLE mammoth_schemer"):
                continue
            await superuser.execute(sql)
    finally:
        await superuser.close()

    applied = await migrate(url_as(owner, database))
    assert len(applied) == len(load_migrations())

    conn = await asyncpg.connect(url_as(owner, database))
    try:
        assert await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1", owner)
        # The schemer can switch to its role and create tables in `collections` as it.
        assert await conn.fetchval(
            "SELECT has_schema_privilege('mammoth_schemer', 'collections', 'USAGE, CREATE')"
        )
        assert await conn.fetchval("SELECT pg_has_role($1, 'mammoth_schemer', 'SET')", owner)
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE mammoth_schemer")
            await conn.execute("CREATE TABLE collections.k8s_check (id int)")
    finally:
        await conn.close()


async def test_without_the_bootstrap_sql_the_owner_cannot_migrate(
    owned_database: tuple[str, str],
) -> None:
    owner, database = owned_database
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="vector"):
        await migrate(url_as(owner, database))

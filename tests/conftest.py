"""Test set-up: real PostgreSQL + pgvector and RabbitMQ, reached once per run, or a loud failure.

Every test that needs them gets its own database (cloned from a migrated template) and its
own uuid-named exchange and queues, removed afterwards.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import pytest
from PIL import Image

from common.messages import MediaIngested
from common.migrate import migrate
from common.storage import Storage, open_storage
from common.telemetry import configure_telemetry
from common.topology import (
    QueueSpec,
    cluster_command_queue,
    queue_specs,
)
from tests.s3server import S3Server, s3_server

DATABASE_URL = os.environ.get(
    "DATABASE_URL", "postgresql://postgres@127.0.0.1:55432/file_allocator"
)
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
# One template per test run, so that runs side by side on one server do not clobber it.
TEMPLATE_DB = f"mb_test_template_{os.getpid()}"


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _admin() -> asyncpg.Connection:
    return await asyncpg.connect(_with_db(DATABASE_URL, "postgres"), timeout=5)


async def _prepare() -> None:
    try:
        conn = await _admin()
    except (OSError, asyncpg.PostgresError) as error:
        pytest.exit(f"PostgreSQL is not reachable at {DATABASE_URL}: {error}", returncode=3)
    try:
        has_vector = await conn.fetchval(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
        )
        if not has_vector:
            pytest.exit(f"PostgreSQL at {DATABASE_URL} has no pgvector extension", returncode=3)
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await conn.close()
    await migrate(_with_db(DATABASE_URL, TEMPLATE_DB))
    try:
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=5)
    except Exception as error:
        pytest.exit(f"RabbitMQ is not reachable at {RABBITMQ_URL}: {error}", returncode=3)
    await connection.close()


UNIT_TESTS = Path(__file__).parent / "unit"
_prepared = False


def pytest_sessionstart(session: pytest.Session) -> None:
    # Real tracing, as the services set it up, so trace ids flow through the tests too.
    configure_telemetry("tests")


CHAOS_TESTS = Path(__file__).parent / "chaos"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/chaos restarts PostgreSQL and RabbitMQ under every other test's feet: it is
    collected only when named (scripts/test.sh runs it alone, after the rest)."""
    if collection_path != CHAOS_TESTS:
        return None
    named = (Path(arg.split("::")[0]).resolve() for arg in config.args)
    return None if any(p.is_relative_to(CHAOS_TESTS) for p in named) else True


def pytest_collection_finish(session: pytest.Session) -> None:
    """Reach PostgreSQL and RabbitMQ (or stop loudly) unless only pure unit tests run."""
    global _prepared
    if all(Path(item.path).is_relative_to(UNIT_TESTS) for item in session.items):
        return  # tests/unit is pure: it runs in seconds without either server
    asyncio.run(_prepare())
    _prepared = True


async def _drop_template() -> None:
    conn = await _admin()
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
    finally:
        await conn.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _prepared:
        return
    try:
        asyncio.run(_drop_template())
    except (OSError, asyncpg.PostgresError):
        pass  # the server went away: nothing to clean


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = f"mb_t_{uuid.uuid4().hex[:16]}"
    conn = await _admin()
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB} STRATEGY FILE_COPY")
    finally:
        await conn.close()
    yield _with_db(DATABASE_URL, name)
    conn = await _admin()
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's database, for assertions."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def amqp() -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(RABBITMQ_URL)
    yield connection
    await connection.close()


@dataclass(frozen=True)
class BusNames:
    exchange: str
    prefix: str
    specs: tuple[QueueSpec, ...]


@pytest.fixture
async def bus_names(amqp: aio_pika.abc.AbstractRobustConnection) -> AsyncIterator[BusNames]:
    """A uuid-named exchange and queue prefix; the queues are deleted after the test."""
    tag = uuid.uuid4().hex[:10]
    prefix = f"t{tag}."
    specs = queue_specs(prefix)
    exchange = f"t{tag}.mammothbox"
    yield BusNames(exchange, prefix, specs)
    channel = await amqp.channel()
    for spec in specs:
        for name in (spec.name, spec.parking, *(spec.delay(i) for i in range(1, 6))):
            await channel.queue_delete(name)
    # The RPC queues go with their last server (common/rpc.py).
    await channel.queue_delete(cluster_command_queue(prefix))
    await channel.exchange_delete(exchange)
    await channel.close()


def media_event(**overrides: Any) -> MediaIngested:
    """A valid media.ingested event for content that need not exist."""
    values: dict[str, Any] = {
        "content_id": uuid.uuid4(),
        "job_id": uuid.uuid4(),
        "sha256": "a" * 64,
        "kind": "image",
        "mime_type": "image/png",
        "size_bytes": 1,
    }
    return MediaIngested(**(values | overrides))


def make_jpeg(seed: int, size: tuple[int, int] = (96, 96), quality: int = 90) -> bytes:
    """A distinct JPEG: random noise from a seed, so every seed has different bytes."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_png(seed: int, size: tuple[int, int] = (32, 32)) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def read_queue(
    amqp: aio_pika.abc.AbstractRobustConnection,
    name: str,
    *,
    expect: int,
    settle: float = 0.3,
    timeout: float = 10.0,
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message from a queue: wait for `expect`, then `settle` seconds for strays."""
    channel = await amqp.channel()
    queue = await channel.get_queue(name)
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    quiet_since = loop.time()
    while True:
        message = await queue.get(no_ack=True, fail=False)
        now = loop.time()
        if message is not None:
            got.append(message)
            quiet_since = now
            continue
        if len(got) >= expect and now - quiet_since >= settle:
            break
        if now > deadline:
            break
        await asyncio.sleep(0.02)
    await channel.close()
    return got


async def fill_queue(
    amqp: aio_pika.abc.AbstractRobustConnection, queue: str, body: bytes = b"{}"
) -> int:
    """Publish until the queue refuses (reject-publish); how many it took. A quorum queue
    enforces its length limit a little late, so this asks rather than counts."""
    channel = await amqp.channel(publisher_confirms=True)
    try:
        for taken in range(1000):
            try:
                await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)
            except aio_pika.exceptions.DeliveryError:
                return taken
        raise AssertionError(f"{queue} never refused a publish")
    finally:
        await channel.close()


@pytest.fixture(scope="session")
def lite2_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite2 with its ImageNet weights, exported once per run (MODEL_DIR)."""
    from mammoth_export.efficientnet import export_image_encoder

    models = tmp_path_factory.mktemp("models")
    export_image_encoder(models / "efficientnet-lite2")
    return models


@pytest.fixture
def storage_path(tmp_path: Path) -> Path:
    return tmp_path / "storage"


BACKENDS = ("filesystem", "s3")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_storage_backends` run once per backend (the `storage_backend`
    fixture, which the storage settings and every service's settings follow)."""
    if (
        metafunc.definition.get_closest_marker("both_storage_backends")
        and "storage_backend" in metafunc.fixturenames
    ):
        metafunc.parametrize("storage_backend", BACKENDS)


@pytest.fixture
def storage_backend() -> str:
    """The backend of a test not marked `both_storage_backends`: the default."""
    return "filesystem"


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-API server (moto), started on first use, once per run."""
    with s3_server(tmp_path_factory.mktemp("s3") / "server.log") as server:
        yield server


@pytest.fixture
def storage_settings(
    request: pytest.FixtureRequest, storage_backend: str, storage_path: Path, tmp_path: Path
) -> dict[str, Any]:
    """The storage settings of one test: a folder, or a prefix of its own in the S3 bucket
    (and a scratch folder of its own, so a test can see that nothing is left in it)."""
    if storage_backend == "s3":
        server: S3Server = request.getfixturevalue("s3")
        scratch = tmp_path / "scratch"
        return {**server.settings(), "storage_path": storage_path, "storage_scratch_dir": scratch}
    return {"storage_path": storage_path}


def storage_variables(settings: dict[str, Any]) -> dict[str, str]:
    """`storage_settings` as the environment variables of a service run as a process."""
    return {key.upper(): str(value) for key, value in settings.items()}


@pytest.fixture
async def storage(storage_settings: dict[str, Any]) -> AsyncIterator[Storage]:
    """The test's store, through the port, as the services open it."""
    from common.settings import CommonSettings

    opened = open_storage(CommonSettings(**storage_settings), fsync=False)
    yield opened
    await opened.close()


@pytest.fixture
def common_settings(
    database_url: str, bus_names: BusNames, storage_settings: dict[str, Any]
) -> dict[str, Any]:
    """Settings every service gets in a test: its database, exchange, queues and storage."""
    return {
        "database_url": database_url,
        "rabbitmq_url": RABBITMQ_URL,
        **storage_settings,
        "bus_exchange": bus_names.exchange,
        "bus_queue_prefix": bus_names.prefix,
        "bus_retry_delays": (0.05, 0.1),
        "db_pool_size": 2,
        "db_max_overflow": 8,
        # Services in tests listen on loopback only (the tests run open: no API keys).
        "http_host": "127.0.0.1",
        "worker_http_host": "127.0.0.1",
    }


def service_env(
    database_url: str, bus_names: BusNames, storage_path: Path, **variables: str
) -> dict[str, str]:
    """The environment of a service run as a process: this test's database, bus and storage
    (as `common_settings`), plus `variables`."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "RABBITMQ_URL": RABBITMQ_URL,
        "STORAGE_PATH": str(storage_path),
        "BUS_EXCHANGE": bus_names.exchange,
        "BUS_QUEUE_PREFIX": bus_names.prefix,
        "BUS_RETRY_DELAYS": "0.05,0.1",
        "HTTP_HOST": "127.0.0.1",
        "WORKER_HTTP_HOST": "127.0.0.1",
        **variables,
    }


@pytest.fixture
def settings_factory(common_settings: dict[str, Any]) -> Callable[..., Any]:
    """Gateway settings pointing at this test's database, exchange and storage."""
    from gateway.settings import GatewaySettings

    def make(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            **common_settings,
            "min_free_disk_bytes": 0,
            "storage_fsync": False,
        }
        values.update(overrides)
        return GatewaySettings(**values)

    return make

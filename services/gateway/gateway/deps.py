"""What handlers share: settings, the pool, the bus, storage, the relay, backpressure, clients."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import asyncpg
import structlog
from aiohttp import web

from common.bus import Bus
from common.embed_client import ImageEmbedClient, TextEmbedClient
from common.outbox import OutboxRelay
from common.rpc import RpcClient
from common.storage import Storage
from gateway.backpressure import Backpressure
from gateway.ingest_commit import IngestCommit
from gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Deps:
    settings: GatewaySettings
    pool: asyncpg.Pool
    bus: Bus
    storage: Storage
    backpressure: Backpressure
    relay: OutboxRelay | None
    ingest_commit: IngestCommit
    cluster_commands: RpcClient
    text_embeddings: TextEmbedClient
    image_embeddings: ImageEmbedClient
    started_at: float = field(default_factory=time.time)

    def wake_relay(self) -> None:
        if self.relay is not None:
            self.relay.wake()


DEPS: web.AppKey[Deps] = web.AppKey("deps", Deps)

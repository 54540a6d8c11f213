"""Settings shared by every service, read from the environment (names as in DESIGN.md)."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class CommonSettings(BaseSettings):
    """Settings every MammothBox process reads."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, case_sensitive=False)

    # The database, a postgresql:// URL. Secrets are SecretStr: no repr, log line or
    # validation error shows them.
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/file_allocator")
    # PostgreSQL, and each process's connection pool: min DB_POOL_SIZE, max plus overflow.
    db_pool_size: int = Field(10, ge=1, le=500)
    db_max_overflow: int = Field(10, ge=0, le=500)
    # RabbitMQ; the store: a folder shared by the gateway, embedder, clusterer and analyzer
    # (filesystem), or an S3-compatible bucket (s3; see common/storage/s3.py).
    rabbitmq_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    storage_backend: Literal["filesystem", "s3"] = "filesystem"
    storage_path: Path = Path("data/storage")
    # Where a process keeps its own temporary files with S3 (downloads for the decoders);
    # the system's temporary folder when unset. (With a filesystem store: STORAGE_PATH/tmp.)
    storage_scratch_dir: Path | None = None
    # S3: the bucket (required), a key prefix, the endpoint of an S3-compatible server
    # (AWS when unset) and region. Credentials come from the standard AWS variables
    # (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), a mounted credentials
    # file (AWS_SHARED_CREDENTIALS_FILE) or web identity, as botocore finds them.
    s3_bucket: str = Field("", validate_default=True)
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    # Uploads larger than one part go as multipart uploads, one part in memory at a time
    # (plus one in flight) per upload: 5 MiB is S3's least.
    s3_part_size_bytes: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024, le=1024**3)
    # Attempts per request (botocore's standard retries: backoff on 5xx, throttling, resets).
    s3_max_attempts: int = Field(5, ge=1, le=20)
    # PUT with If-None-Match: * (AWS, MinIO, Ceph RGW take it); false: a HEAD first instead.
    s3_conditional_writes: bool = True
    # Messages the clusterer handles at once (see docs/troubleshooting.md, Performance).
    worker_threads: int = Field(4, ge=1, le=256)
    # /metrics (false: it answers 404).
    metrics_enabled: bool = True
    # On SIGTERM, how long a service lets the work in flight finish before it stops anyway
    # (below Kubernetes' terminationGracePeriodSeconds and supervisord's stopwaitsecs, 30).
    shutdown_grace_seconds: float = Field(25.0, gt=0, le=3600)
    # How long the stage log (the timeline's rows, table stage_runs) keeps a message; 0 keeps all.
    stage_log_retention_days: float = Field(30.0, ge=0)
    # DEBUG adds detail to errors; LOG_LEVEL filters the (JSON) log lines.
    debug: bool = False
    log_level: LogLevel = "INFO"

    # API keys: comma-separated key:role[:owner] (the gateway checks them); none = open. Every
    # service reads them (one secret for the deployment) to know whether it runs open.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    # One admin key on its own, beside or instead of API_KEYS.
    admin_api_key: SecretStr | None = None
    # Open (no keys) and listening beyond loopback is refused unless this says it is meant.
    allow_open: bool = False

    # Bus tuning: queue length limit, retry tiers (seconds) and the broker's crash-loop guard.
    bus_exchange: str = "mammothbox"
    bus_queue_prefix: str = ""
    bus_queue_max_length: int = Field(100_000, ge=1)
    # Comma-separated seconds, e.g. BUS_RETRY_DELAYS=1,10,60.
    bus_retry_delays: Annotated[tuple[float, ...], NoDecode] = (1.0, 10.0, 60.0)
    bus_delivery_limit: int = Field(20, ge=1)
    # How long a publish waits for the broker's confirm (a broker blocked by a memory or disk
    # alarm never answers): past it the publish counts as refused.
    bus_publish_timeout_s: float = Field(10.0, gt=0, le=300)
    # A worker whose outgoing event is refused pauses its consumer, doubling the pause on
    # each refusal in a row up to this many seconds.
    bus_pause_max_s: float = Field(15.0, gt=0, le=600)
    # An outbox row no queue is bound to is parked (dead-letter API, queue "outbox") once it
    # is this old and has failed three times; rows waiting on a full queue never are.
    outbox_park_unroutable_after_s: float = Field(300.0, ge=0)
    # Each message's time limit: a handler still running after it is cancelled and the
    # message retried like any other failure. Per queue (its name without the prefix):
    # HANDLER_TIMEOUTS=analyzer.media-embedded=120,clusterer.media-embedded=60.
    handler_timeout_seconds: float = Field(300.0, gt=0, le=86_400)
    handler_timeouts: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// URL")
        return value

    @field_validator("s3_bucket")
    @classmethod
    def _bucket(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("storage_backend") == "s3" and not value.strip():
            raise ValueError("is required with STORAGE_BACKEND=s3")
        return value.strip()

    @field_validator("s3_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip().strip("/")
        if value and any(part in ("", ".", "..") for part in value.split("/")):
            raise ValueError("must be a plain key prefix (no empty, . or .. parts)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("bus_retry_delays", mode="before")
    @classmethod
    def _delays(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part for part in value.replace(" ", "").split(",") if part]
        if isinstance(value, list | tuple) and not value:
            raise ValueError("needs at least one delay")
        return value

    @field_validator("handler_timeouts", mode="before")
    @classmethod
    def _timeouts(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs = {}
        for part in value.split(","):
            if not part.strip():
                continue
            queue, sep, seconds = part.partition("=")
            if not sep or not queue.strip():
                raise ValueError("expected queue=seconds, comma-separated")
            pairs[queue.strip()] = seconds.strip()
        return pairs

    @field_validator("handler_timeouts")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        if any(not 0 < seconds <= 86_400 for seconds in value.values()):
            raise ValueError("each time limit must be between 0 and 86400 seconds")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        return comma_separated(value)

    @field_validator("admin_api_key", mode="before")
    @classmethod
    def _blank_key(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def database_dsn(self) -> str:
        """DATABASE_URL itself, for the driver only (never log it)."""
        return self.database_url.get_secret_value()

    @property
    def amqp_url(self) -> str:
        """RABBITMQ_URL itself, for the client only."""
        return self.rabbitmq_url.get_secret_value()

    @property
    def api_key_entries(self) -> tuple[str, ...]:
        """API_KEYS entries (key:role[:owner]) for the gateway's key ring only."""
        return tuple(entry.get_secret_value() for entry in self.api_keys)

    @property
    def db_pool_max(self) -> int:
        """asyncpg max_size: pool size plus overflow."""
        return self.db_pool_size + self.db_max_overflow

    def timeout_for(self, queue: str) -> float:
        """A queue's handler time limit (HANDLER_TIMEOUTS, else HANDLER_TIMEOUT_SECONDS)."""
        name = queue.removeprefix(self.bus_queue_prefix)
        return self.handler_timeouts.get(name, self.handler_timeout_seconds)

    @property
    def keys_configured(self) -> bool:
        """Whether the deployment has API keys (API_KEYS or ADMIN_API_KEY); none = open."""
        return bool(self.api_keys) or self.admin_api_key is not None


class WorkerSettings(CommonSettings):
    """Settings of every worker (not the gateway): the probe server's address."""

    # Where a worker's probes listen (/live, /ready, /health, /metrics); each worker has its
    # own default port.
    worker_http_host: str = "0.0.0.0"
    worker_http_port: int = Field(8080, ge=0, le=65535)


def comma_separated(value: object, *, lower: bool = False) -> object:
    """A tuple from `a, b,,c` (empty parts dropped); other values pass through as they are."""
    if isinstance(value, str):
        parts = (part.strip() for part in value.split(","))
        return tuple(part.lower() if lower else part for part in parts if part)
    return value


S = TypeVar("S", bound=BaseSettings)


def describe_error(error: ValidationError) -> str:
    """One line naming every offending variable."""
    parts = []
    for item in error.errors():
        name = "_".join(str(p) for p in item["loc"]).upper() or "SETTINGS"
        parts.append(f"{name}: {item['msg']}")
    return "invalid setting " + "; ".join(parts)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) and localhost; anything else reaches out."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name other than localhost may resolve to anything
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class OpenBindRefused(ValueError):
    """Listening beyond loopback with no API key configured, and ALLOW_OPEN not set."""


def check_bind(settings: CommonSettings, host: str, variable: str) -> None:
    """Refuse (OpenBindRefused, one line) to listen on a non-loopback `host` in an open
    deployment (no API_KEYS, no ADMIN_API_KEY) unless ALLOW_OPEN=true says it is meant."""
    if settings.allow_open or settings.keys_configured or is_loopback(host):
        return
    raise OpenBindRefused(
        f"refusing to listen on {variable}={host or '(all interfaces)'} with no API key"
        " configured: set API_KEYS or ADMIN_API_KEY, listen on 127.0.0.1, or set"
        " ALLOW_OPEN=true to run open on the network"
    )


def load_settings(cls: type[S], *, listen: str | None = None) -> S:
    """Build settings from the environment or exit with one line naming the bad variable.

    `listen` names the setting holding the address the process will listen on; an open
    deployment listening beyond loopback stops here too (check_bind).
    """
    try:
        settings = cls()
    except ValidationError as error:
        print(describe_error(error), file=sys.stderr)
        raise SystemExit(2) from None
    except SettingsError as error:
        print(f"invalid setting: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if listen is not None and isinstance(settings, CommonSettings):
        try:
            check_bind(settings, str(getattr(settings, listen)), listen.upper())
        except OpenBindRefused as error:
            print(error, file=sys.stderr)
            raise SystemExit(2) from None
    return settings

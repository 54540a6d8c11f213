"""Gateway settings: the common ones plus HTTP, upload limits and backpressure."""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from common.settings import CommonSettings, comma_separated
from gateway.retention_policy import RetentionPolicy, parse_rules

MB = 1024 * 1024


class GatewaySettings(CommonSettings):
    """Environment variables read by the gateway."""

    # Where the API listens (and its /ready, /health, /metrics).
    http_host: str = "0.0.0.0"
    http_port: int = Field(8000, ge=0, le=65535)
    # Processes serving the port together (SO_REUSEPORT); on Kubernetes scale pods instead.
    http_workers: int = Field(1, ge=1, le=64)
    # fsync each stored file and its folder before an upload is acknowledged.
    storage_fsync: bool = True
    # With S3: answer a content download with a redirect to a presigned URL valid this many
    # seconds (the client must reach the S3 endpoint); 0 streams through the gateway.
    s3_presigned_read_seconds: int = Field(0, ge=0, le=7 * 86400)

    # Upload limits: bytes per file by kind, JSON items and depth, files and form fields.
    max_image_bytes: int = Field(50 * MB, ge=1)
    max_video_bytes: int = Field(1024 * MB, ge=1)
    max_json_bytes: int = Field(16 * MB, ge=1)
    max_json_items: int = Field(10_000, ge=1)
    # Arrays and objects nested in any JSON the gateway reads; orjson writes at most 254.
    max_json_depth: int = Field(64, ge=1, le=254)
    max_files_per_request: int = Field(100, ge=1)
    max_field_bytes: int = Field(64 * 1024, ge=1)

    # Slow clients: a body must keep arriving and finish in time (408), uploads at once are
    # capped per process (503), and request headers must arrive within the keep-alive timeout
    # (aiohttp's: it closes a connection whose request has not started in that time).
    upload_idle_timeout_seconds: float = Field(30.0, gt=0)
    upload_timeout_seconds: float = Field(1800.0, gt=0)
    max_concurrent_uploads: int = Field(128, ge=1)
    http_keepalive_timeout_seconds: float = Field(30.0, gt=0)

    # A link to one trace in the operator's trace UI, e.g. Jaeger's
    # http://jaeger:16686/trace/{trace_id}; job status and the timeline show it for recorded
    # traces.
    trace_ui_url: str | None = None

    # The storage sweeper (gateway/sweep.py): how often (0: never, in this process) and how
    # old an object without a row or a temp file must be before it is removed.
    sweep_interval_seconds: float = Field(600.0, ge=0)
    sweep_min_age_seconds: float = Field(3600.0, ge=0)

    # Retention (gateway/retention.py): days an upload is kept (0: forever), and rules that
    # override it per collection, owner or kind, the most specific first
    # (collection:logs=1,owner:alice=7,kind:json=30; 0 in a rule keeps forever). The job runs
    # every RETENTION_INTERVAL_SECONDS (0: never, in this process) in one gateway at a time;
    # in dry-run mode it only counts and logs what is due (GET /api/v1/admin/retention lists
    # it), in delete mode it deletes it.
    retention_days: float = Field(0.0, ge=0, allow_inf_nan=False)
    retention_rules: Annotated[tuple[str, ...], NoDecode] = ()
    retention_mode: Literal["dry-run", "delete"] = "dry-run"
    retention_interval_seconds: float = Field(3600.0, ge=0, allow_inf_nan=False)

    # Backpressure: answer 503 rather than accept what cannot be kept.
    min_free_disk_bytes: int = Field(1024 * MB, ge=0)
    outbox_max_lag_seconds: float = Field(60.0, gt=0)
    outbox_max_pending: int = Field(100_000, ge=1)
    retry_after_seconds: int = Field(5, ge=1)

    # PATCH /api/v1/clusters/{id} waits this long for the clusterer to carry the command out.
    cluster_command_timeout_s: float = Field(30.0, gt=0, le=600)
    # A text search waits this long for the embedder to embed the query.
    search_embed_timeout_s: float = Field(5.0, gt=0, le=120)
    # The largest image a search by image accepts.
    search_image_max_bytes: int = Field(10 * MB, ge=1, le=32 * MB)

    # API_KEYS and ADMIN_API_KEY are common settings (every service knows whether it runs
    # open); the gateway checks their entries: role read, write or admin.
    # Origins allowed to call the API from a browser (CORS); "*" for any.
    cors_allow_origins: Annotated[tuple[str, ...], NoDecode] = ()

    # The relay may run in every gateway pod (rows are claimed with SKIP LOCKED) or apart.
    outbox_relay_enabled: bool = True
    # The dead-letter recorder too (it keeps parked messages for the dead-letter API).
    dlq_recorder_enabled: bool = True

    @field_validator("cors_allow_origins", "retention_rules", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return comma_separated(value)

    @field_validator("trace_ui_url")
    @classmethod
    def _trace_link(cls, value: str | None) -> str | None:
        if not value:
            return None
        if "{trace_id}" not in value or not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL with {trace_id} in it")
        return value

    @field_validator("retention_rules")
    @classmethod
    def _retention_rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_rules(value, 0.0)  # a bad rule stops the gateway at start, naming the rule
        return value

    @cached_property
    def retention_policy(self) -> RetentionPolicy:
        """RETENTION_DAYS and RETENTION_RULES, parsed once (the settings are frozen)."""
        return parse_rules(self.retention_rules, self.retention_days)

    @field_validator("api_keys")
    @classmethod
    def _key_entries(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        from gateway.auth import parse_keys

        # A bad entry stops the gateway at start, naming the entry.
        parse_keys(tuple(entry.get_secret_value() for entry in value), None)
        return value

    @model_validator(mode="after")
    def _one_copy_on_s3(self) -> GatewaySettings:
        # A large S3 upload is copied to its content name in one CopyObject (5 GiB at most).
        limit = 5 * 1024**3
        if self.storage_backend == "s3" and max(self.max_video_bytes, self.max_image_bytes) > limit:
            raise ValueError("MAX_VIDEO_BYTES and MAX_IMAGE_BYTES are at most 5 GiB with S3")
        return self

    @model_validator(mode="after")
    def _sweep_after_uploads(self) -> GatewaySettings:
        # A temp file younger than the longest upload may belong to one still arriving.
        if self.sweep_min_age_seconds < self.upload_timeout_seconds:
            raise ValueError(
                "SWEEP_MIN_AGE_SECONDS must be at least UPLOAD_TIMEOUT_SECONDS"
                f" ({self.sweep_min_age_seconds:g} < {self.upload_timeout_seconds:g})"
            )
        return self

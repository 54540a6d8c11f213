"""Settings, dead-letter descriptions and message models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.dlq import describe_death, original_routing_key
from common.messages import MediaIngested
from common.settings import (
    CommonSettings,
    OpenBindRefused,
    check_bind,
    describe_error,
    is_loopback,
    load_settings,
)
from tests.conftest import media_event


def test_settings_map_pool_size_and_overflow_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", "4")
    monkeypatch.setenv("DB_MAX_OVERFLOW", "6")
    monkeypatch.setenv("BUS_RETRY_DELAYS", "0.5, 2,30")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = CommonSettings()
    assert (settings.db_pool_size, settings.db_pool_max) == (4, 10)
    assert settings.bus_retry_delays == (0.5, 2.0, 30.0)
    assert settings.log_level == "DEBUG"


def test_settings_never_show_secrets_when_printed_or_invalid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:db-pass-1@db:5432/file_allocator")
    monkeypatch.setenv("RABBITMQ_URL", "amqp://app:bus-pass-2@mq:5672/")
    monkeypatch.setenv("API_KEYS", "key-3:admin,key-4:read:alice")
    monkeypatch.setenv("ADMIN_API_KEY", "key-5")
    monkeypatch.setenv("HANDLER_TIMEOUTS", "analyzer.media-embedded=120")
    settings = CommonSettings()
    shown = f"{settings!r} {settings} {settings.model_dump()}"
    for secret in ("db-pass-1", "bus-pass-2", "key-3", "key-4", "key-5"):
        assert secret not in shown
    assert settings.database_dsn == "postgresql://app:db-pass-1@db:5432/file_allocator"
    assert settings.amqp_url == "amqp://app:bus-pass-2@mq:5672/"
    assert settings.api_key_entries == ("key-3:admin", "key-4:read:alice")
    assert settings.timeout_for("analyzer.media-embedded") == 120
    assert settings.timeout_for("embedder.media-ingested") == settings.handler_timeout_seconds
    monkeypatch.setenv("DATABASE_URL", "mysql://app:db-pass-6@db/x")
    with pytest.raises(ValidationError) as error:
        CommonSettings()
    assert "db-pass-6" not in describe_error(error.value)


def test_settings_error_is_one_line_naming_variables_when_invalid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DB_POOL_SIZE", "0")
    monkeypatch.setenv("DATABASE_URL", "mysql://x")
    with pytest.raises(ValidationError) as error:
        CommonSettings()
    line = describe_error(error.value)
    assert "\n" not in line
    assert "DB_POOL_SIZE" in line and "DATABASE_URL" in line
    with pytest.raises(SystemExit) as exit_info:
        load_settings(CommonSettings)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"STORAGE_BACKEND": "s3"}, "S3_BUCKET"),
        ({"STORAGE_BACKEND": "s3", "S3_BUCKET": "b", "S3_PREFIX": "a/../b"}, "S3_PREFIX"),
        ({"STORAGE_BACKEND": "s3", "S3_BUCKET": "b", "S3_PART_SIZE_BYTES": "1000"}, "S3_PART"),
        ({"STORAGE_BACKEND": "azure"}, "STORAGE_BACKEND"),
    ],
)
def test_storage_settings_stop_the_service_naming_the_variable_when_invalid(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as error:
        CommonSettings()
    line = describe_error(error.value)
    assert named in line and "\n" not in line


def test_storage_settings_take_a_bucket_and_a_plain_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_BACKEND", "s3")
    monkeypatch.setenv("S3_BUCKET", " media ")
    monkeypatch.setenv("S3_PREFIX", "/prod/mammothbox/")
    settings = CommonSettings()
    assert (settings.s3_bucket, settings.s3_prefix) == ("media", "prod/mammothbox")


def test_check_bind_refuses_a_network_address_when_no_api_key_is_configured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LocalHost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.5", "192.168.1.2", "example.org", "127.0.0.1.nip.io"):
        assert not is_loopback(host), host
    open_settings = CommonSettings()
    check_bind(open_settings, "127.0.0.1", "HTTP_HOST")  # loopback: always fine
    for host in ("0.0.0.0", "::", ""):
        with pytest.raises(OpenBindRefused, match="ALLOW_OPEN=true") as refused:
            check_bind(open_settings, host, "HTTP_HOST")
        assert "HTTP_HOST" in str(refused.value) and "\n" not in str(refused.value)
    # Keys configured (for the gateway, or shared with a worker), or open on purpose: fine.
    check_bind(CommonSettings(api_keys=("k" * 16 + ":read",)), "0.0.0.0", "HTTP_HOST")
    check_bind(CommonSettings(admin_api_key="a" * 16), "0.0.0.0", "WORKER_HTTP_HOST")
    check_bind(CommonSettings(allow_open=True), "0.0.0.0", "HTTP_HOST")
    # Blank keys are no keys.
    assert not CommonSettings(api_keys=" , ", admin_api_key="  ").keys_configured

    # At start: one line on stderr and exit code 2, like a bad setting.
    monkeypatch.setenv("WORKER_HTTP_HOST", "0.0.0.0")

    class Worker(CommonSettings):
        worker_http_host: str = "127.0.0.1"

    with pytest.raises(SystemExit) as exit_info:
        load_settings(Worker, listen="worker_http_host")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "WORKER_HTTP_HOST=0.0.0.0" in err and "API_KEYS" in err
    assert load_settings(Worker).worker_http_host == "0.0.0.0"  # no listen: not checked
    monkeypatch.setenv("ALLOW_OPEN", "true")
    assert load_settings(Worker, listen="worker_http_host").allow_open


def test_describe_death_reads_our_headers_or_the_brokers_when_parked() -> None:
    assert describe_death({"x-error": "boom", "x-attempt": 3}) == ("boom", 3)
    broker = {"x-death": [{"reason": "delivery_limit", "count": 20, "queue": "q"}]}
    assert describe_death(broker) == ("dead-lettered by the broker: delivery_limit", 20)
    assert describe_death({})[0].startswith("dead-lettered without")


def test_messages_are_frozen_and_ignore_unknown_fields_when_parsed() -> None:
    event = media_event()
    parsed = MediaIngested.model_validate_json(event.to_bytes()[:-1] + b', "extra": 1}')
    assert parsed == event
    with pytest.raises(ValidationError):
        parsed.size_bytes = 2  # type: ignore[misc]
    assert MediaIngested.routing_key == "media.ingested.v1"


def test_original_routing_key_reads_our_header_or_the_brokers_death_when_parked() -> None:
    ours = {"x-origin-routing-key": "media.recluster.v1"}
    assert original_routing_key(ours, "q.dlq") == "media.recluster.v1"
    # Dead-lettered by the broker (delivery limit): it arrives keyed by the parking queue.
    broker = {"x-death": [{"reason": "delivery_limit", "routing-keys": ["media.embedded.v1"]}]}
    assert original_routing_key(broker, "q.dlq") == "media.embedded.v1"
    assert original_routing_key({}, "q.dlq") == "q.dlq"

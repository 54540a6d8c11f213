"""Settings, dead-letter descriptions and message models."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from common.dlq import describe_death
from common.messages import MediaIngested
from common.settings import CommonSettings, describe_error, load_settings
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

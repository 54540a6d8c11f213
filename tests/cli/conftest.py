"""The CLI's tests run against the real gateway (tests/integration's fixtures)."""

from tests.integration.conftest import gateway, start_gateway  # noqa: F401

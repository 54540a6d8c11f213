"""The storage tests use the gateway as the integration tests start it."""

from tests.integration.conftest import gateway, start_gateway  # noqa: F401

"""The storage tests use the gateway as the integration tests start it, and the S3 fault
proxy (tests/storage/s3fault.py) in front of the test run's S3 server."""

from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import gateway, start_gateway  # noqa: F401
from tests.s3server import S3Server
from tests.storage.s3fault import S3Faults


@pytest.fixture
async def faults(s3: S3Server) -> AsyncIterator[S3Faults]:
    """An HTTP proxy before the S3 server that fails the requests a test chooses."""
    proxy = S3Faults(s3.endpoint)
    await proxy.start()
    yield proxy
    await proxy.close()

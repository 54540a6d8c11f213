"""A real S3-API server for the tests: moto in server mode, as its own process.

moto implements the S3 REST API over HTTP (signatures, multipart uploads, conditional PUTs,
ranges, presigned URLs), so the backend is exercised through aiobotocore exactly as against
AWS or MinIO. Started once per run (a few seconds), stopped by pid; every test gets a bucket
prefix of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port

BUCKET = "mammothbox-test"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "mammothbox-test",
    "AWS_SECRET_ACCESS_KEY": "mammothbox-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    pid: int

    def settings(self, prefix: str | None = None) -> dict[str, object]:
        """Storage settings of one test: the shared bucket, a prefix of its own."""
        return {
            "storage_backend": "s3",
            "s3_endpoint_url": self.endpoint,
            "s3_bucket": BUCKET,
            "s3_prefix": prefix or f"t{uuid.uuid4().hex[:12]}",
            "s3_part_size_bytes": 5 * 1024 * 1024,
            "s3_max_attempts": 3,
        }

    def env(self, prefix: str | None = None) -> dict[str, str]:
        """The same as environment variables, for services run as processes."""
        return {k.upper(): str(v) for k, v in self.settings(prefix).items()} | CREDENTIALS


def _answering(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def s3_server(log: Path) -> Iterator[S3Server]:
    """Start moto's server on a free port, with the test bucket; stop it when done."""
    os.environ.update(CREDENTIALS)  # the test process's own clients sign with these
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _answering(f"{endpoint}/moto-api/"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the S3 server did not start: see {log}")
            time.sleep(0.1)
        request = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
        urllib.request.urlopen(request, timeout=5).close()  # moto takes unsigned admin calls
        yield S3Server(endpoint, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

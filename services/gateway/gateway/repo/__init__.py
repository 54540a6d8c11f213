"""The gateway's SQL, one module per concern; the names other modules import, re-exported.

Owner-scoped statements go through gateway/repo/scope.py (owner isolation, written once).
"""

from gateway.repo.ingest import (
    IdempotencyHit,
    IngestRecord,
    IngestRequest,
    NewUpload,
    record_ingests,
    write_ingest_with_key,
    write_ingests,
)
from gateway.repo.objects import (
    job_with_uploads,
    lock_objects,
    referenced_keys,
    upload_with_content,
)
from gateway.repo.scope import OwnerScope, Statement

__all__ = [
    "IdempotencyHit",
    "IngestRecord",
    "IngestRequest",
    "NewUpload",
    "OwnerScope",
    "Statement",
    "job_with_uploads",
    "lock_objects",
    "record_ingests",
    "referenced_keys",
    "upload_with_content",
    "write_ingest_with_key",
    "write_ingests",
]

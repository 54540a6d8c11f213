"""The gateway's SQL, one module per concern; the names other modules import, re-exported."""

from gateway.repo.ingest import (
    IdempotencyHit,
    IngestRecord,
    IngestRequest,
    NewUpload,
    job_with_uploads,
    lock_objects,
    record_ingests,
    referenced_keys,
    upload_with_content,
    write_ingest_with_key,
    write_ingests,
)

__all__ = [
    "IdempotencyHit",
    "IngestRecord",
    "IngestRequest",
    "NewUpload",
    "job_with_uploads",
    "lock_objects",
    "record_ingests",
    "referenced_keys",
    "upload_with_content",
    "write_ingest_with_key",
    "write_ingests",
]

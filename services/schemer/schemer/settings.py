"""Schemer settings: how documents are grouped, and the rules of table vs JSONB."""

from __future__ import annotations

from pydantic import Field

from common.settings import WorkerSettings


class SchemerSettings(WorkerSettings):
    """Environment variables read by the schemer."""

    # A document joins the owner's collection whose key paths it shares this much of
    # (Jaccard similarity), or opens a new one.
    schema_match_threshold: float = Field(0.5, gt=0, le=1)
    # Documents of one batch whose values are looked at for the statistics (every document
    # is still checked against the table it goes into).
    schema_sample_size: int = Field(1000, ge=1, le=100_000)
    # A table needs keys present, on average, in this share of the documents.
    schema_stability_threshold: float = Field(0.8, gt=0, le=1)
    # A table has at most this many top-level keys (more: a JSONB collection).
    schema_max_top_level_keys: int = Field(50, ge=1, le=400)
    # Objects nested deeper than this make a JSONB collection (and are where flattening stops).
    schema_max_depth: int = Field(3, ge=1, le=16)
    # Create the proposed table at once, without waiting for an admin.
    schema_auto_approve: bool = False
    # The role DDL and writes to the `collections` schema run as ("" to run as the login).
    schemer_ddl_role: str = Field("mammoth_schemer", max_length=63)
    # Staged documents moved into a table per transaction during an approval.
    schemer_approval_batch: int = Field(1000, ge=1, le=50_000)
    # An approval of many documents takes longer than an ordinary message.
    schemer_command_timeout_s: float = Field(3600.0, gt=0)
    # JSON messages the schemer holds at once.
    schemer_prefetch: int = Field(8, ge=1, le=1000)
    worker_http_port: int = Field(8084, ge=0, le=65535)

"""The OpenAPI 3.1 document of the HTTP API, served at /api/v1/openapi.json.

Request bodies that the gateway validates with pydantic take their schemas from those models,
so the document and the validation cannot drift apart; a test checks every route against it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter

from common.cluster_commands import Change
from gateway.deadletters import RequeueAll
from gateway.retention import RunRequest
from gateway.search_query import SearchRequest

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR = _json(_ref("Error"), "An error")


def _errors(*codes: int) -> dict[str, Any]:
    """An operation's error answers; every one may answer 503 while a dependency is down."""
    codes = (*codes, 503) if 503 not in codes else codes
    text = {400: "Malformed request", 401: "No valid API key", 403: "The key may not do this",
            404: "Not found (or not visible to this key)", 409: "Conflict",
            413: "Too large", 415: "Unsupported media type", 503: "Unavailable; retry later",
            504: "No answer in time", 410: "Gone"}  # fmt: skip
    return {str(c): {**ERROR, "description": text[c]} for c in codes}


def _id(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": what,
            "schema": {"type": "string", "format": "uuid"}}  # fmt: skip


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}  # fmt: skip


PAGING = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
    _query("offset", {"type": "integer", "minimum": 0}),
]
NULLABLE_STRING = {"type": ["string", "null"]}
UUID = {"type": "string", "format": "uuid"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "request_id"],
        "properties": {
            "error": {"type": "string"},
            "details": {},
            "request_id": {"type": "string"},
        },
    },
    "IngestAccepted": {
        "type": "object",
        "required": ["job_id", "system_ids", "status", "request_id", "created_at"],
        "properties": {
            "job_id": UUID,
            "system_ids": {"type": "array", "items": UUID},
            "status": {"type": "string"},
            "request_id": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "JobStatus": {
        "type": "object",
        "required": ["job_id", "status", "progress", "uploads"],
        "properties": {
            "job_id": UUID,
            "status": {"enum": ["queued", "processing", "done", "failed", "partial"]},
            "owner": {"type": "string"},
            "trace_id": NULLABLE_STRING,
            "trace_sampled": {
                "type": ["boolean", "null"],
                "description": "false: sampling left the trace out, no backend has it",
            },
            "trace_url": {
                "type": ["string", "null"],
                "description": "TRACE_UI_URL for this trace, when it was recorded",
            },
            "timeline": {"type": "string", "description": "the path of the job's timeline"},
            "progress": {"type": "object"},
            "uploads": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Timeline": {
        "type": "object",
        "required": ["job_id", "trace_id", "trace_sampled", "uploads"],
        "properties": {
            "job_id": UUID,
            "received_at": {"type": ["string", "null"], "format": "date-time"},
            "accepted_at": {"type": "string", "format": "date-time"},
            "trace_id": NULLABLE_STRING,
            "trace_sampled": {"type": ["boolean", "null"]},
            "trace_url": NULLABLE_STRING,
            "uploads": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["system_id", "status", "stages"],
                    "properties": {
                        "system_id": UUID,
                        "status": {"type": "string"},
                        "elapsed_seconds": {"type": ["number", "null"]},
                        "stages": {
                            "type": "array",
                            "description": (
                                "ingest, then each consumer's stage as its stage log recorded"
                                " it (service, queued/published/started/finished, attempts,"
                                " wait_seconds vs work_seconds, error, shared: processed for"
                                " the job that first stored the content), then what is still"
                                " pending or skipped"
                            ),
                            "items": {"type": "object", "required": ["stage", "outcome"]},
                        },
                    },
                },
            },
        },
    },
    "Object": {
        "type": "object",
        "required": ["system_id", "content_id", "kind", "status"],
        "properties": {
            "embeddings": {
                "type": "array",
                "items": {"type": "object", "required": ["model_id", "dim"]},
                "description": "the model and dimension of each embedding of its content",
            },
            "cluster": {
                "type": ["object", "null"],
                "description": "its cluster's id and the name this key may see",
            },
            "document": {"type": "object", "description": "JSON: where its document went"},
        },
    },
    "Cluster": {
        "type": "object",
        "required": ["id", "name", "name_source", "provisional", "threshold", "member_count"],
        "properties": {
            "id": UUID,
            "name": {"type": "string"},
            "name_source": {"enum": ["placeholder", "vlm", "admin"]},
            "provisional": {"type": "boolean"},
            "threshold": {
                "type": ["number", "null"],
                "description": "the similarity a newcomer needs to join",
            },
            "threshold_source": {
                "enum": ["cluster", "model"],
                "description": "set for this cluster by an admin, or the model's calibrated one",
            },
            "member_count": {"type": "integer"},
            "model_id": {"type": "string"},
            "thumbnails": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ClusterList": {
        "type": "object",
        "required": ["clusters", "total", "limit", "offset"],
        "properties": {
            "clusters": {"type": "array", "items": _ref("Cluster")},
            "total": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
        },
    },
    "ClusterDetail": {
        "allOf": [_ref("Cluster")],
        "type": "object",
        "required": ["members", "members_total"],
    },
    "ClusterChanged": {"type": "object", "required": ["cluster"]},
    "Proposal": {
        "type": "object",
        "required": ["id", "kind", "cluster_ids", "plan", "reason", "gain", "status"],
        "properties": {
            "id": UUID,
            "run_id": UUID,
            "model_id": {"type": "string"},
            "kind": {"enum": ["merge", "split", "move"]},
            "cluster_ids": {"type": "array", "items": UUID},
            "plan": {
                "type": "object",
                "description": "merge: target, sources; split: cluster, part (content ids); move: from, to, members",
            },
            "reason": {"type": "string"},
            "gain": {
                "type": "number",
                "description": "how far the change's average similarity lies past the linkage threshold",
            },
            "status": {"enum": ["open", "accepted", "dismissed", "stale"]},
        },
    },
    "SearchResults": {
        "type": "object",
        "required": ["results", "total", "has_more", "limit", "offset", "query_time_ms"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "id",
                        "content_id",
                        "kind",
                        "similarity",
                        "score",
                        "text_match",
                        "tags",
                    ],
                },
            },
            "total": {"type": "integer"},
            "has_more": {"type": "boolean"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "model_id": {"type": "string"},
            "query_time_ms": {"type": "number"},
        },
    },
    "DeadLetter": {
        "type": "object",
        "required": ["job_id", "upload_id", "queue", "error", "attempts", "failed_at"],
        "properties": {
            "id": {"type": "integer"},
            "job_id": {"type": ["string", "null"], "format": "uuid"},
            "upload_id": {"type": ["string", "null"], "format": "uuid"},
            "content_id": {"type": ["string", "null"], "format": "uuid"},
            "queue": {"type": "string"},
            "error": {"type": "string"},
            "attempts": {"type": "integer"},
            "failed_at": {"type": "string", "format": "date-time"},
            "requeued_at": {"type": ["string", "null"], "format": "date-time"},
            "body": {"description": "the parked message (a job's dead letters only)"},
            "traceback": {
                "type": ["string", "null"],
                "description": "the handler's traceback when it failed unexpectedly, its last"
                " 8000 characters (a job's dead letters only)",
            },
        },
    },
    "Count": {"type": "object", "additionalProperties": {"type": "integer"}},
    "ModelSwitchState": {
        "type": "object",
        "required": ["active_model", "switch"],
        "properties": {
            "active_model": {"type": ["string", "null"], "description": "the model search uses"},
            "switch": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["id", "from_model", "to_model", "status"],
                        "properties": {
                            "id": {"type": "string", "format": "uuid"},
                            "from_model": {"type": "string"},
                            "to_model": {"type": "string"},
                            "status": {
                                "enum": ["backfilling", "paused", "flipped", "dropped", "cancelled"]
                            },
                            "requested_by": {"type": "string"},
                            "started_at": {"type": "string", "format": "date-time"},
                            "flipped_at": {"type": ["string", "null"], "format": "date-time"},
                            "finished_at": {"type": ["string", "null"], "format": "date-time"},
                            "report": {
                                "type": "object",
                                "description": "what the flip and the drop did",
                            },
                        },
                    },
                ]
            },
            "progress": {
                "type": "object",
                "description": "while the switch is live: stored media, how many the next model"
                " has embedded and filed, how many it still lacks",
                "properties": {
                    k: {"type": "integer"} for k in ("media", "embedded", "pending", "filed")
                },
            },
        },
    },
    "RetentionListing": {
        "type": "object",
        "required": ["as_of", "mode", "policy", "due", "by_rule", "uploads", "next"],
        "properties": {
            "as_of": {"type": "string", "format": "date-time"},
            "mode": {"enum": ["dry-run", "delete"], "description": "RETENTION_MODE of the job"},
            "policy": {"type": "object"},
            "due": {"type": "integer"},
            "by_rule": {"$ref": "#/components/schemas/Count"},
            "uploads": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "system_id": {"type": "string", "format": "uuid"},
                        "owner": {"type": "string"},
                        "kind": {"enum": ["image", "video", "json"]},
                        "collection": {"type": ["string", "null"]},
                        "created_at": {"type": "string", "format": "date-time"},
                        "rule": {"type": "string"},
                        "days": {"type": "number"},
                    },
                },
            },
            "next": {"type": ["string", "null"], "description": "after= for the next page"},
        },
    },
    "Schema": {
        "type": "object",
        "required": ["id", "owner", "name", "status", "storage", "document_count", "decision"],
        "properties": {
            "id": UUID,
            "owner": {"type": "string"},
            "name": {"type": "string"},
            "name_source": {"enum": ["given", "generated"]},
            "status": {"enum": ["provisional", "approving", "approved", "rejecting", "rejected"]},
            "storage": {"enum": ["table", "jsonb"]},
            "table": NULLABLE_STRING,
            "document_count": {"type": "integer"},
            "staged": {"type": "integer"},
            "decision": {
                "type": "object",
                "description": "storage, reasons (plain words), confidence (0-1) and"
                " confidence_words, and the key paths whose types change",
            },
        },
    },
    "SchemaDetail": {
        "allOf": [_ref("Schema")],
        "type": "object",
        "required": ["fields", "json_schema", "proposed_ddl", "migrations"],
        "properties": {
            "fields": {"type": "array", "items": {"type": "object"}},
            "json_schema": {"type": "object"},
            "proposed_ddl": {"type": "string"},
            "columns": {"type": ["array", "null"]},
            "migrations": {"type": "array", "items": {"type": "object"}},
        },
    },
    "CommandAccepted": {
        "type": "object",
        "required": ["id", "action", "status"],
        "properties": {
            "id": UUID,
            "action": {"type": "string"},
            "status": {"type": "string"},
            "migration": {"type": ["integer", "null"]},
        },
    },
    "Documents": {
        "type": "object",
        "required": ["collection", "collection_id", "storage", "documents", "next_after"],
        "properties": {
            "collection": {"type": "string"},
            "collection_id": UUID,
            "owner": {"type": "string"},
            "status": {"type": "string"},
            "storage": {"enum": ["table", "jsonb", "staged"]},
            "documents": {
                "type": "array",
                "items": {"type": "object", "required": ["system_id", "document"]},
            },
            "next_after": {"description": "pass as `after` for the next page; null at the end"},
        },
    },
}


def _pydantic(adapter: TypeAdapter[Any], name: str) -> dict[str, Any]:
    schema = adapter.json_schema(ref_template=REF)
    for key, value in schema.pop("$defs", {}).items():
        SCHEMAS[key] = value
    SCHEMAS[name] = schema
    return _ref(name)


PROBE = {"security": [], "tags": ["operations"]}


_DELETED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "deleted_uploads": {"type": "array", "items": UUID},
        "deleted_jobs": {"type": "array", "items": UUID},
    },
}


@cache
def document() -> dict[str, Any]:
    """The whole document (built once)."""
    search_body = _pydantic(TypeAdapter(SearchRequest), "SearchRequest")
    change_body = _pydantic(TypeAdapter(Change), "ClusterChange")
    requeue_body = _pydantic(TypeAdapter(RequeueAll), "RequeueAll")
    retention_body = _pydantic(TypeAdapter(RunRequest), "RetentionRun")
    search_query = [
        _query(
            "query", {"type": "string", "minLength": 1, "maxLength": 1000}, "text to search for"
        ),
        _query("like", UUID, "an upload id: search by its embedding"),
        _query("kind", {"enum": ["image", "video"]}),
        _query("owner", {"type": "string"}),
        _query("cluster_id", UUID),
        _query("tags", {"type": "string"}, "comma-separated"),
        _query("tags_mode", {"enum": ["any", "all"]}),
        _query("threshold", {"type": "number", "minimum": -1, "maximum": 1}),
        *PAGING,
    ]
    paths: dict[str, Any] = {
        "/api/v1/ingest": {"post": {
            "tags": ["ingest"], "summary": "Upload files and/or JSON (202 once durable)",
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "files[]": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "payload": {"type": "string"}, "owner": {"type": "string"},
                    "comments": {"type": "string"}, "idempotency_key": {"type": "string"},
                    "collection": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$"}}}},
                "application/json": {"schema": {}}}},
            "parameters": [_query("owner", {"type": "string"}), _query("comments", {"type": "string"}),
                           _query("idempotency_key", {"type": "string"}),
                           _query("collection", {"type": "string"}, "the collection for the JSON documents")],
            "responses": {"202": _json(_ref("IngestAccepted"), "Accepted"),
                          **_errors(400, 401, 403, 409, 413, 415, 503)}}},
        "/api/v1/ingest/{job_id}": {"delete": {
            "tags": ["ingest"], "summary": "Delete every upload of a job, and the job",
            "parameters": [_id("job_id", "the job")],
            "responses": {"200": _json(_DELETED), **_errors(400, 401, 403, 404)}}},
        "/api/v1/ingest/{job_id}/status": {"get": {
            "tags": ["ingest"], "summary": "A job's status, derived from its content's stages",
            "parameters": [_id("job_id", "the job")],
            "responses": {"200": _json(_ref("JobStatus")), **_errors(400, 401, 404)}}},
        "/api/v1/ingest/{job_id}/timeline": {"get": {
            "tags": ["ingest"],
            "summary": "Where each upload of a job is and where its time went (format=text: a table)",
            "parameters": [_id("job_id", "the job"),
                           {"name": "format", "in": "query", "required": False,
                            "schema": {"enum": ["json", "text"]}}],
            "responses": {"200": {"description": "The timeline", "content": {
                "application/json": {"schema": _ref("Timeline")},
                "text/plain": {"schema": {"type": "string"}}}},
                **_errors(400, 401, 404)}}},
        "/api/v1/objects/{object_id}": {
            "get": {
                "tags": ["objects"], "summary": "An upload and what is known of its content",
                "parameters": [_id("object_id", "the upload (system id)")],
                "responses": {"200": _json(_ref("Object")), **_errors(400, 401, 404)}},
            "delete": {
                "tags": ["objects"],
                "summary": "Delete an upload (its content goes once no upload refers to it)",
                "parameters": [_id("object_id", "the upload (system id)")],
                "responses": {"200": _json(_DELETED), **_errors(400, 401, 403, 404)}}},
        "/api/v1/objects/{object_id}/content": {"get": {
            "tags": ["objects"], "summary": "The stored bytes, or the JSON document",
            "parameters": [_id("object_id", "the upload")],
            "responses": {"200": {"description": "The bytes", "content": {"*/*": {}}},
                          **_errors(400, 401, 404, 410)}}},
        "/api/v1/objects/{object_id}/thumbnail": {"get": {
            "tags": ["objects"], "summary": "The 256-px JPEG thumbnail",
            "parameters": [_id("object_id", "the upload")],
            "responses": {"200": {"description": "JPEG", "content": {"image/jpeg": {}}},
                          **_errors(400, 401, 404, 410)}}},
        "/api/v1/search": {
            "get": {"tags": ["search"], "summary": "Search by text or by an upload",
                    "parameters": search_query,
                    "responses": {"200": _json(_ref("SearchResults")),
                                  **_errors(400, 401, 403, 404, 409, 503)}},
            "post": {"tags": ["search"], "summary": "The same search as a JSON body, or by an uploaded image (multipart)",
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": search_body},
                         "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                             "image": {"type": "string", "format": "binary"},
                             "kind": {"enum": ["image", "video"]}, "owner": {"type": "string"},
                             "cluster_id": UUID, "tags": {"type": "string"},
                             "tags_mode": {"enum": ["any", "all"]},
                             "threshold": {"type": "string"}, "limit": {"type": "string"},
                             "offset": {"type": "string"}}}}}},
                     "responses": {"200": _json(_ref("SearchResults")),
                                   **_errors(400, 401, 403, 404, 409, 413, 415, 503)}}},
        "/api/v1/clusters": {"get": {
            "tags": ["clusters"], "summary": "Clusters, newest first",
            "parameters": [_query("provisional", {"enum": ["true", "false"]}),
                           _query("model_id", {"type": "string"}), *PAGING],
            "responses": {"200": _json(_ref("ClusterList")), **_errors(400, 401)}}},
        "/api/v1/clusters/proposals": {"get": {
            "tags": ["clusters"], "summary": "Re-clustering proposals, the largest gain first, and the latest runs (admin not bound to an owner)",
            "parameters": [_query("status", {"enum": ["open", "accepted", "dismissed", "stale", "all"]}),
                           _query("model_id", {"type": "string"}), *PAGING],
            "responses": {"200": _json({"type": "object", "required": ["proposals", "total", "runs"], "properties": {
                "proposals": {"type": "array", "items": _ref("Proposal")},
                "total": {"type": "integer"}, "limit": {"type": "integer"}, "offset": {"type": "integer"},
                "runs": {"type": "array", "items": {"type": "object"}}}}), **_errors(400, 401, 403)}}},
        "/api/v1/clusters/proposals/{proposal_id}/accept": {"post": {
            "tags": ["clusters"], "summary": "Carry out a proposal (admin): members moved, centroids recomputed, folders synced, audited",
            "parameters": [_id("proposal_id", "the proposal")],
            "responses": {"200": _json({"type": "object", "required": ["proposal"]}),
                          **_errors(400, 401, 403, 404, 409, 503, 504)}}},
        "/api/v1/clusters/proposals/{proposal_id}/dismiss": {"post": {
            "tags": ["clusters"], "summary": "Dismiss a proposal (admin); a later run does not propose it again",
            "parameters": [_id("proposal_id", "the proposal")],
            "responses": {"200": _json({"type": "object", "required": ["proposal"]}),
                          **_errors(400, 401, 403, 404, 409, 503, 504)}}},
        "/api/v1/clusters/recluster": {"post": {
            "tags": ["clusters"], "summary": "Run the re-clustering now (admin), for one model or all; the runs show in the proposals listing",
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False,
                "properties": {"model_id": {"type": "string", "minLength": 1, "maxLength": 200}}}}}},
            "responses": {"202": _json({"type": "object"}, "Started"), **_errors(400, 401, 403, 413, 503, 504)}}},
        "/api/v1/clusters/{cluster_id}": {
            "get": {"tags": ["clusters"], "summary": "A cluster and its members, paged",
                    "parameters": [_id("cluster_id", "the cluster"), *PAGING],
                    "responses": {"200": _json(_ref("ClusterDetail")), **_errors(400, 401, 404)}},
            "patch": {"tags": ["clusters"],
                      "summary": "rename, merge, update_threshold, confirm or reject (admin); "
                                 "waits for the clusterer's answer",
                      "parameters": [_id("cluster_id", "the cluster")],
                      "requestBody": {"required": True, "content": {"application/json": {"schema": change_body}}},
                      "responses": {"200": _json(_ref("ClusterChanged")),
                                    **_errors(400, 401, 403, 404, 409, 413, 503, 504)}}},
        "/api/v1/schemas": {"get": {
            "tags": ["schemas"], "summary": "Collections of JSON documents with their decisions, newest first",
            "parameters": [_query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
                           _query("offset", {"type": "integer", "minimum": 0})],
            "responses": {"200": _json({"type": "object", "required": ["schemas"], "properties": {
                "schemas": {"type": "array", "items": _ref("Schema")}}}), **_errors(400, 401)}}},
        "/api/v1/schemas/{schema_id}": {"get": {
            "tags": ["schemas"], "summary": "A collection: fields with their statistics, decision and reasons, JSON Schema, proposed DDL, migrations",
            "parameters": [_id("schema_id", "the collection")],
            "responses": {"200": _json(_ref("SchemaDetail")), **_errors(400, 401, 404)}}},
        "/api/v1/schemas/{schema_id}/approve": {"post": {
            "tags": ["schemas"], "summary": "Approve the proposal (admin): the schemer creates the table and moves the staged documents in",
            "parameters": [_id("schema_id", "the collection")],
            "responses": {"202": _json(_ref("CommandAccepted"), "Queued"), **_errors(400, 401, 403, 404, 409)}}},
        "/api/v1/schemas/{schema_id}/reject": {"post": {
            "tags": ["schemas"], "summary": "Reject the proposal (admin): the collection becomes a JSONB collection",
            "parameters": [_id("schema_id", "the collection")],
            "responses": {"202": _json(_ref("CommandAccepted"), "Queued"), **_errors(400, 401, 403, 404, 409)}}},
        "/api/v1/schemas/{schema_id}/migrations/{n}/approve": {"post": {
            "tags": ["schemas"], "summary": "Approve a proposed migration of the table (admin)",
            "parameters": [_id("schema_id", "the collection"),
                           {"name": "n", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}],
            "responses": {"202": _json(_ref("CommandAccepted"), "Queued"), **_errors(400, 401, 403, 404, 409)}}},
        "/api/v1/collections/{name}/documents": {"get": {
            "tags": ["schemas"], "summary": "A collection's documents, paged by row, with filters on known fields",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$"}},
                           _query("owner", {"type": "string"}, "whose collection (when several owners share the name)"),
                           {"name": "where", "in": "query", "required": False, "explode": True,
                            "schema": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
                            "description": "<path><op><value>, op one of = != < <= > >=; repeatable (all hold)"},
                           _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                           _query("after", {"type": "string"}, "next_after of the previous page")],
            "responses": {"200": _json(_ref("Documents")), **_errors(400, 401, 404, 409)}}},
        "/api/v1/collections/{name}/documents/{object_id}": {"get": {
            "tags": ["schemas"], "summary": "One document of a collection, by its upload's id",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$"}},
                           _id("object_id", "the upload (system id)"),
                           _query("owner", {"type": "string"})],
            "responses": {"200": _json({"type": "object", "required": ["system_id", "document"]}),
                          **_errors(400, 401, 404, 409)}}},
        "/api/v1/admin/retention": {"get": {
            "tags": ["admin"],
            "summary": "The retention dry run: what the policy has made due at as_of, by rule, a page at a time",
            "parameters": [_query("as_of", {"type": "string", "format": "date-time"}),
                           _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                           _query("after", {"type": "string", "format": "uuid"})],
            "responses": {"200": _json(_ref("RetentionListing")), **_errors(400, 401, 403)}}},
        "/api/v1/admin/retention/run": {"post": {
            "tags": ["admin"],
            "summary": "Delete what the retention policy has made due at as_of (default now)",
            "requestBody": {"required": False, "content": {"application/json": {"schema": retention_body}}},
            "responses": {"200": _json({"type": "object", "properties": {
                "as_of": {"type": "string", "format": "date-time"}, "due": {"type": "integer"},
                "by_rule": _ref("Count"), "deleted_uploads": {"type": "integer"},
                "deleted_jobs": {"type": "integer"}}}), **_errors(400, 401, 403, 413)}}},
        "/api/v1/admin/model-switch": {"get": {
            "tags": ["admin"],
            "summary": "The active embedding model, the latest model switch and its progress",
            "responses": {"200": _json(_ref("ModelSwitchState")), **_errors(401, 403)}}},
        "/api/v1/admin/model-switch/{action}": {"post": {
            "tags": ["admin"],
            "summary": "pause or resume the backfill; flip to the next model; drop the old"
                       " model's data; cancel a switch before its flip",
            "parameters": [{"name": "action", "in": "path", "required": True,
                            "schema": {"enum": ["pause", "resume", "flip", "drop", "cancel"]}}],
            "responses": {"200": _json(_ref("ModelSwitchState")),
                          **_errors(401, 403, 404, 409, 503, 504)}}},
        "/api/v1/admin/dlq": {
            "get": {"tags": ["dead letters"], "summary": "Dead letters, newest first",
                    "parameters": [_query("queue", {"type": "string"}),
                                   _query("state", {"enum": ["parked", "requeued", "all"]}),
                                   _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                                   _query("offset", {"type": "integer", "minimum": 0})],
                    "responses": {"200": _json({"type": "array", "items": _ref("DeadLetter")}),
                                  **_errors(400, 401, 403)}},
            "delete": {"tags": ["dead letters"], "summary": "Purge every parked dead letter",
                       "responses": {"200": _json(_ref("Count")), **_errors(401, 403)}}},
        "/api/v1/admin/dlq/requeue": {"post": {
            "tags": ["dead letters"],
            "summary": 'Requeue every parked dead letter (of one queue): {"all": true, "queue"?}',
            "requestBody": {"required": True, "content": {"application/json": {"schema": requeue_body}}},
            "responses": {"200": _json(_ref("Count")), **_errors(400, 401, 403, 413)}}},
        "/api/v1/admin/owners/{owner}": {"delete": {
            "tags": ["admin"], "summary": "Delete everything of one owner: uploads, jobs, collections (a key bound to an owner: its own only)",
            "parameters": [{"name": "owner", "in": "path", "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
            "responses": {"200": _json({"type": "object", "properties": {
                "owner": {"type": "string"}, "deleted_uploads": {"type": "integer"},
                "deleted_jobs": {"type": "integer"}}}), **_errors(400, 401, 403)}}},
        "/api/v1/admin/dlq/{job_id}": {
            "get": {"tags": ["dead letters"], "summary": "A job's dead letters with their bodies",
                    "parameters": [_id("job_id", "the job")],
                    "responses": {"200": _json({"type": "array", "items": _ref("DeadLetter")}),
                                  **_errors(400, 401, 403, 404)}},
            "delete": {"tags": ["dead letters"], "summary": "Purge a job's dead letters",
                       "parameters": [_id("job_id", "the job")],
                       "responses": {"200": _json(_ref("Count")), **_errors(400, 401, 403, 404)}}},
        "/api/v1/admin/dlq/{job_id}/requeue": {"post": {
            "tags": ["dead letters"], "summary": "Requeue a job's parked dead letters (no body, or {})",
            "parameters": [_id("job_id", "the job")],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "maxProperties": 0}}}},
            "responses": {"200": _json(_ref("Count")), **_errors(400, 401, 403, 404, 413)}}},
        "/": {"get": {"security": [], "tags": ["ui"], "summary": "The web UI",
                      "responses": {"200": {"description": "The page", "content": {"text/html": {}}}}}},
        "/ui/{name}": {"get": {
            "security": [], "tags": ["ui"], "summary": "One of the web UI's scripts or styles",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                           _query("v", {"type": "string"})],
            "responses": {"200": {"description": "The asset", "content": {"text/javascript": {}, "text/css": {}}},
                          "404": ERROR}}},
        "/api/v1/me": {"get": {
            **PROBE, "summary": "Who the caller's key is: its role (null: no valid key), its owner, whether the gateway runs open",
            "responses": {"200": _json({"type": "object", "required": ["role", "owner", "open"], "properties": {
                "role": {"enum": ["read", "write", "admin", None]}, "owner": {"type": ["string", "null"]},
                "open": {"type": "boolean"}}})}}},
        "/api/v1/openapi.json": {"get": {**PROBE, "summary": "This document",
                                         "responses": {"200": _json({"type": "object"})}}},
        "/live": {"get": {**PROBE, "summary": "The process is up",
                          "responses": {"200": _json({"type": "object"})}}},
        "/ready": {"get": {**PROBE, "summary": "Database, bus and storage reachable",
                           "responses": {"200": _json({"type": "object"}), "503": _json({"type": "object"}, "Not ready")}}},
        "/health": {"get": {**PROBE, "summary": "Health with its sections",
                            "responses": {"200": _json({"type": "object"}), "503": _json({"type": "object"}, "Unhealthy")}}},
        "/metrics": {"get": {**PROBE, "summary": "Prometheus metrics",
                             "responses": {"200": {"description": "Prometheus text",
                                                   "content": {"text/plain": {}}}}}},
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MammothBox",
            "version": "1",
            "description": "A self-hosted smart file allocator. Errors are JSON "
            "{error, details?, request_id}. With API keys configured, send one as "
            "`Authorization: Bearer <key>` or `X-API-Key`; a key bound to an owner sees and "
            "writes only that owner's uploads.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


async def handle_openapi(request: web.Request) -> web.Response:
    return web.json_response(document())

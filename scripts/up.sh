#!/usr/bin/env bash
# Bring MammothBox up on this machine and show it doing its job:
#   installs into .venv, starts PostgreSQL + pgvector (unless DATABASE_URL is set) and RabbitMQ,
#   migrates, starts every service (today: the gateway with its outbox relay and dead-letter
#   recorder) in the background, then ingests a sample image and JSON and prints their status.
# Stop everything with scripts/down.sh. Logs: .run/*.log
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
.venv/bin/python scripts/migrate.py --create-database

start() {  # name, command...
    local name=$1; shift
    if [ -f ".run/$name.pid" ] && kill -0 "$(cat ".run/$name.pid")" 2>/dev/null; then
        echo "$name already running (pid $(cat ".run/$name.pid"))"; return
    fi
    nohup "$@" >".run/$name.log" 2>&1 &
    echo $! >".run/$name.pid"
    echo "$name started (pid $!, log .run/$name.log)"
}
start gateway .venv/bin/python -m gateway

base="http://127.0.0.1:$HTTP_PORT"
for _ in $(seq 1 60); do
    curl -fsS "$base/ready" >/dev/null 2>&1 && break
    sleep 0.5
done
curl -fsS "$base/ready" >/dev/null || { echo "gateway did not become ready; see .run/gateway.log" >&2; exit 1; }

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
answer=$(curl -fsS -F "files[]=@$sample" -F 'payload=[{"name": "sample", "size": 3}]' -F owner=demo "$base/api/v1/ingest")
echo "$answer"
job=$(echo "$answer" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
echo; echo "== status of job $job"
curl -fsS "$base/api/v1/ingest/$job/status"; echo
echo; echo "== health"
curl -fsS "$base/health"; echo
echo
echo "MammothBox is up at $base (API: POST /api/v1/ingest). Stop it with scripts/down.sh"

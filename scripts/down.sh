#!/usr/bin/env bash
# Stop what scripts/up.sh started (services and the local PostgreSQL; RabbitMQ is left running).
set -euo pipefail
cd "$(dirname "$0")/.."
for pidfile in .run/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; echo "stopped $(basename "$pidfile" .pid)"; fi
    rm -f "$pidfile"
done
if [ -z "${DATABASE_URL:-}" ] && [ -x .venv/bin/python ]; then
    .venv/bin/python scripts/localdb.py stop
fi

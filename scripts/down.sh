#!/usr/bin/env bash
# Stop what scripts/up.sh started (the services, Prometheus and Phoenix when they ran, and the
# local PostgreSQL; RabbitMQ is left running). Their data stays in .run/.
set -euo pipefail
cd "$(dirname "$0")/.."
# The services, then the extra programs (Prometheus, Phoenix), through supervisorctl, then
# supervisord by its pid (nothing to do if none runs).
if [ -x .venv/bin/python ]; then
    .venv/bin/python scripts/supervise.py stop
fi
# Services started by an up.sh from before supervisord, one pid file each.
for name in gateway embedder clusterer analyzer; do
    pidfile=.run/$name.pid
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; echo "stopped $name"; fi
    rm -f "$pidfile"
done
if [ -z "${DATABASE_URL:-}" ] && [ -x .venv/bin/python ]; then
    .venv/bin/python scripts/localdb.py stop
fi

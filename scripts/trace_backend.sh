#!/usr/bin/env bash
# Install the trace backend TRACE_BACKEND names into a virtual environment of its own, unless it
# is there already at the pinned version (idempotent; `TRACE_BACKEND=phoenix scripts/up.sh` runs
# it, then scripts/supervise.py runs the backend under supervisord).
#   scripts/trace_backend.sh [phoenix]
# phoenix: Arize Phoenix (arize-phoenix on PyPI) into PHOENIX_VENV (default .run/phoenix-venv),
# never into .venv: its dependencies (its own OpenTelemetry, FastAPI, SQLAlchemy, pandas, ...)
# would clash with MammothBox's. About 850 MB; under a minute from a PyPI mirror. It is licensed
# under the Elastic License 2.0, not an open source licence: see docs/trace-backend.md.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-${TRACE_BACKEND:-phoenix}}
if [ "$backend" != phoenix ]; then
    echo "TRACE_BACKEND=$backend: the one known is phoenix" >&2
    exit 2
fi
PHOENIX_VERSION=20.26.1
venv=${PHOENIX_VENV:-$PWD/.run/phoenix-venv}
installed=$("$venv/bin/python" -c \
    'import importlib.metadata as m; print(m.version("arize-phoenix"))' 2>/dev/null || true)
if [ "$installed" = "$PHOENIX_VERSION" ] && [ -x "$venv/bin/phoenix" ]; then
    exit 0
fi
# Phoenix 20 runs on Python 3.11 to 3.14.
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 15))'; then
    echo "arize-phoenix $PHOENIX_VERSION needs Python 3.11 to 3.14; set PYTHON to one" >&2
    exit 1
fi
echo "installing arize-phoenix $PHOENIX_VERSION into $venv (Elastic License 2.0; about 850 MB)"
if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "arize-phoenix==$PHOENIX_VERSION"

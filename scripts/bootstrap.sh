#!/usr/bin/env bash
# Create .venv and install MammothBox with the extras this machine needs (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.mammothbox-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[gateway,embedder,analyzer,schemer,export,localdb,native,cli,dev]"
    touch "$stamp"
fi

# The embedder as GPU machines install it (`embedder-gpu`: onnxruntime-gpu, which must never
# share an environment with onnxruntime). The tests run it here, where no GPU is usable.
if [ ! -x .venv-gpu/bin/python ]; then
    "$PYTHON" -m venv .venv-gpu
fi
gpu_stamp=.venv-gpu/.mammothbox-installed
if [ ! -f "$gpu_stamp" ] || [ pyproject.toml -nt "$gpu_stamp" ]; then
    .venv-gpu/bin/python -m pip install --quiet --upgrade pip
    .venv-gpu/bin/python -m pip install --quiet -e ".[embedder-gpu]"
    touch "$gpu_stamp"
fi

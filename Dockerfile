# syntax=docker/dockerfile:1
# MammothBox's images: one file, a target per kind, the service as a build argument.
#
#   docker build --build-arg SERVICE=gateway -t mammothbox/gateway .   # also runs the migrations
#   docker build --build-arg SERVICE=embedder -t mammothbox/embedder .  # the embedder on CPUs
#   docker build --target embedder-gpu -t mammothbox/embedder-gpu .    # the embedder on CUDA
#   docker build --target export -t mammothbox/export .                # the one-off model export
#   docker build --target backup -t mammothbox/backup .                # backup, restore, verify
#
# SERVICE is gateway, embedder, clusterer, analyzer or schemer: the image holds that service
# and its extra from pyproject.toml, nothing else. No image holds a model: the embedder reads
# MODEL_DIR (/models), a volume the export image fills once (scripts/ensure_model.sh).
# Every image runs as uid 10001 with a read-only root filesystem in mind: it writes only to
# STORAGE_PATH (/data/storage), MODEL_DIR and /tmp.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.7
# onnxruntime-gpu 1.31 from PyPI is built for CUDA 13 and cuDNN 9.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
# Backups need pg_dump and pg_restore of the server's major version (18).
ARG POSTGRES_IMAGE=postgres:18.1-bookworm

FROM ${UV_IMAGE} AS uv

# ---- the source, as the installs below need it (pyproject.toml lists the packages)
FROM ${PYTHON_IMAGE} AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY libs libs
COPY services services
COPY tools tools

# ---- a service's virtual environment (CPU): uv installs from PyPI, compiling bytecode
FROM source AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never
ARG SERVICE=gateway
RUN uv venv /opt/venv && uv pip install --python /opt/venv/bin/python ".[${SERVICE}]"

# ---- a service (the default target)
FROM ${PYTHON_IMAGE} AS service
ARG SERVICE=gateway
RUN groupadd --system --gid 10001 mammoth \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mammoth \
    && mkdir -p /data/storage /models \
    && chown 10001:10001 /data/storage /models
COPY --from=build /opt/venv /opt/venv
COPY scripts/migrate.py /app/scripts/migrate.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MAMMOTHBOX_SERVICE=${SERVICE} \
    STORAGE_PATH=/data/storage \
    MODEL_DIR=/models
WORKDIR /app
USER 10001:10001
# The service's /ready on its own port (HTTP_PORT or WORKER_HTTP_PORT, as its settings read).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "common.healthcheck"]
# `python -m <service>`; the migration step is `python scripts/migrate.py` in the gateway image.
CMD ["/bin/sh", "-c", "exec python -m \"$MAMMOTHBOX_SERVICE\""]

# ---- the embedder on CUDA: onnxruntime-gpu (never beside onnxruntime) on NVIDIA's runtime
# image with cuDNN; Python 3.11 is uv's standalone build, as Ubuntu has no 3.11.
FROM ${CUDA_IMAGE} AS gpu-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed
WORKDIR /src
COPY --from=source /src /src
RUN uv python install 3.11 && uv venv --python 3.11 /opt/venv \
    && uv pip install --python /opt/venv/bin/python ".[embedder-gpu]"

FROM ${CUDA_IMAGE} AS embedder-gpu
RUN groupadd --system --gid 10001 mammoth \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mammoth \
    && mkdir -p /data/storage /models \
    && chown 10001:10001 /data/storage /models
COPY --from=gpu-build /opt/python /opt/python
COPY --from=gpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MAMMOTHBOX_SERVICE=embedder \
    STORAGE_PATH=/data/storage \
    MODEL_DIR=/models \
    ONNX_PROVIDERS=cuda,cpu
WORKDIR /app
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "common.healthcheck"]
CMD ["python", "-m", "embedder"]

# ---- backups (scripts/backup.py, restore.py, verify_store.py): the gateway's package beside
# PostgreSQL's own client tools of the server's major version, on PostgreSQL's image; Python
# 3.11 is uv's standalone build, as in the GPU image.
FROM ${POSTGRES_IMAGE} AS backup-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python UV_PYTHON_PREFERENCE=only-managed
WORKDIR /src
COPY --from=source /src /src
RUN uv python install 3.11 && uv venv --python 3.11 /opt/venv \
    && uv pip install --python /opt/venv/bin/python ".[gateway]"

FROM ${POSTGRES_IMAGE} AS backup
RUN groupadd --system --gid 10001 mammoth \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mammoth \
    && mkdir -p /data/storage /backups \
    && chown 10001:10001 /data/storage /backups
COPY --from=backup-build /opt/python /opt/python
COPY --from=backup-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PG_BIN=/usr/lib/postgresql/18/bin \
    STORAGE_PATH=/data/storage
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["python", "-m", "gateway.backup"]
CMD ["create", "/backups"]

# ---- the model export, run once to fill MODEL_DIR (torch from PyTorch's CPU index: the
# PyPI build carries CUDA, gigabytes this job never uses)
FROM source AS export
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN uv venv /opt/venv && uv pip install --python /opt/venv/bin/python \
        --index-strategy unsafe-best-match --extra-index-url "${TORCH_INDEX_URL}" \
        ".[export,embedder]" \
    && groupadd --system --gid 10001 mammoth \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mammoth \
    && mkdir -p /models && chown 10001:10001 /models
COPY scripts/export_clip.py scripts/export_image_encoder.py scripts/ensure_model.sh /app/scripts/
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MODEL_DIR=/models \
    HOME=/tmp
WORKDIR /app
USER 10001:10001
CMD ["sh", "scripts/ensure_model.sh"]

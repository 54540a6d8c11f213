"""python -m embedder: CLIP (or any manifest-described ONNX encoder) embeddings for media."""

from __future__ import annotations

from embedder.app import worker
from embedder.settings import EmbedderSettings

if __name__ == "__main__":
    worker.main(EmbedderSettings)

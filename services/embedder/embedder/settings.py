"""Embedder settings: the common ones plus the model, batching and decoding limits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from common.settings import WorkerSettings, comma_separated


class EmbedderSettings(WorkerSettings):
    """Environment variables read by the embedder."""

    # The model: MODEL_DIR/EMBEDDING_MODEL (a folder with manifest.json), and which graph.
    model_dir: Path = Path("models")
    embedding_model: str = "clip-vit-base-patch32"  # a folder under MODEL_DIR
    # A model switch (common/model_switch.py): a second folder under MODEL_DIR. Set, it
    # starts the switch to that model: new uploads are embedded by both, and every stored
    # content is embedded by it in the background (the backfill) until an admin flips.
    embedding_model_next: str | None = None
    # The backfill: items a round (one per decoder at a time), at most this many a second
    # (0: as fast as it goes while no new upload waits), and how often a paused or idle
    # backfill looks again.
    model_backfill_batch: int = Field(16, ge=1, le=1024)
    # Images a backfill inference takes at most: a new upload waits for the one running.
    model_backfill_max_batch: int = Field(2, ge=1, le=4096)
    model_backfill_rate: float = Field(0.0, ge=0)
    model_backfill_poll_s: float = Field(2.0, gt=0, le=3600)
    model_variant: Literal["fp32", "fp16", "int8"] = "fp32"
    # Tried in order, kept where onnxruntime has them: CUDA when usable, else the CPU.
    onnx_providers: Annotated[tuple[str, ...], NoDecode] = ("cuda", "cpu")
    # onnxruntime's threads per inference.
    intra_op_threads: int = Field(2, ge=1, le=256)

    # Micro-batching: at most this many images a batch, waiting at most this long.
    max_batch_size: int = Field(32, ge=1, le=4096)
    max_batch_wait_ms: float = Field(10.0, ge=0, le=10_000)

    # Decoder processes, and each one's memory, time and pixel limits; thumbnail and video
    # frame limits.
    decode_workers: int = Field(2, ge=1, le=256)
    decode_memory_mb: int = Field(1024, ge=64)
    decode_timeout_s: float = Field(30.0, gt=0)
    max_image_pixels: int = Field(50_000_000, ge=1)
    thumbnail_size: int = Field(256, ge=16, le=4096)
    video_max_frames: int = Field(8, ge=1, le=256)

    # pHash Hamming distance at or below which two images are near-duplicates.
    near_duplicate_distance: int = Field(8, ge=0, le=64)
    worker_http_port: int = Field(8081, ge=0, le=65535)

    @field_validator("onnx_providers", mode="before")
    @classmethod
    def _providers(cls, value: object) -> object:
        value = comma_separated(value, lower=True)
        if not value:
            raise ValueError("needs at least one provider")
        unknown = {str(p) for p in value} - {"cuda", "tensorrt", "cpu"}  # type: ignore[attr-defined]
        if unknown:
            raise ValueError(f"unknown providers: {sorted(unknown)}")
        return value

    @field_validator("embedding_model_next", mode="before")
    @classmethod
    def _next(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def model_path(self) -> Path:
        return self.model_dir / self.embedding_model

    @property
    def next_model_path(self) -> Path | None:
        if self.embedding_model_next is None:
            return None
        return self.model_dir / self.embedding_model_next

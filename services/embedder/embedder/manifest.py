"""The model manifest: what an exported model directory holds and how to feed it.

`MODEL_DIR/<name>/manifest.json`, written by scripts/export_clip.py or
scripts/export_image_encoder.py and read by the embedder, describes the ONNX graphs, the
embedding dimension and the image preprocessing, so any ONNX image encoder can serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Preprocess(BaseModel):
    """How pixels become the model's input tensor (NCHW float32)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(gt=0)  # the square side the model sees
    # "shortest_edge": resize so the short side is `resize_to`, then centre-crop image_size
    # (CLIP). "squash": resize straight to image_size x image_size.
    resize: Literal["shortest_edge", "squash"] = "shortest_edge"
    resize_to: int = Field(gt=0)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255  # pixel values are multiplied by this before normalising


class ModelFiles(BaseModel):
    """File names inside the model directory; None where the variant was not exported."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vision: str = "vision.onnx"
    vision_fp16: str | None = None
    vision_int8: str | None = None
    text: str | None = None
    text_fp16: str | None = None
    tokenizer: str | None = None


class Manifest(BaseModel):
    """Everything the embedder needs to know about one exported model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str  # recorded with every vector, e.g. "openai/clip-vit-base-patch32"
    source: str  # where the weights came from (hub id, package, "random-tiny")
    embedding_dim: int = Field(gt=0)
    preprocess: Preprocess
    files: ModelFiles = ModelFiles()
    context_length: int | None = None  # text graph input length (CLIP: 77)
    pad_token_id: int | None = None
    cluster_threshold: float | None = Field(None, gt=0, le=1)
    # Graph input and output names (the exporters write these).
    vision_input: str = "pixel_values"
    text_inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    output: str = "embeddings"

    @property
    def has_text(self) -> bool:
        return self.files.text is not None and self.files.tokenizer is not None

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "manifest.json").write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        return cls.model_validate_json((directory / "manifest.json").read_text())

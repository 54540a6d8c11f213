"""ONNX models behind the EmbeddingModel port: sessions loaded once, run off the event loop."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import structlog
from numpy.typing import NDArray

from embedder.manifest import Manifest
from embedder.tokenize import TextTokenizer

log = structlog.get_logger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class TextSearchUnavailable(RuntimeError):
    """The model has no text graph, so text cannot be embedded."""


class EmbeddingModel(Protocol):
    model_id: str
    dim: int
    provider: str

    def embed_images(self, batch: NDArray[np.float32]) -> NDArray[np.float32]: ...
    def embed_texts(self, texts: list[str]) -> NDArray[np.float32]: ...


def choose_providers(configured: tuple[str, ...]) -> list[str]:
    """Configured providers that this onnxruntime build has, in order (CPU as a last resort)."""
    available = set(ort.get_available_providers())
    chosen = [PROVIDERS[name] for name in configured if PROVIDERS[name] in available]
    return chosen or ["CPUExecutionProvider"]


class OnnxModel:
    """The vision graph (and the text graph with its tokenizer, when the model has one)."""

    def __init__(
        self,
        directory: Path,
        *,
        providers: tuple[str, ...] = ("cuda", "cpu"),
        threads: int = 2,
        variant: str = "fp32",
    ) -> None:
        self.manifest = Manifest.read(directory)
        self.model_id = self.manifest.model_id
        self.dim = self.manifest.embedding_dim
        options = ort.SessionOptions()
        # Explicit thread counts: the decoders and the event loop share these cores.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        files = self.manifest.files
        vision_file = {"fp32": files.vision, "fp16": files.vision_fp16, "int8": files.vision_int8}[
            variant
        ]
        if vision_file is None:
            raise FileNotFoundError(f"model {self.model_id} has no {variant} vision graph")
        chosen = choose_providers(providers)
        self.vision = ort.InferenceSession(str(directory / vision_file), options, providers=chosen)
        self.provider = self.vision.get_providers()[0]
        if self.provider != chosen[0]:  # a GPU build without a usable GPU, CUDA or cuDNN
            log.warning(
                "execution provider not usable; running on the next one",
                wanted=chosen[0],
                provider=self.provider,
            )
        self.text: ort.InferenceSession | None = None
        self.tokenizer: TextTokenizer | None = None
        if self.manifest.has_text:
            assert files.text is not None and files.tokenizer is not None
            text_file = files.text_fp16 if variant == "fp16" and files.text_fp16 else files.text
            self.text = ort.InferenceSession(str(directory / text_file), options, providers=chosen)
            self.tokenizer = TextTokenizer(directory / files.tokenizer)
        log.info(
            "model loaded",
            model_id=self.model_id,
            variant=variant,
            provider=self.provider,
            text=self.text is not None,
        )

    def embed_images(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """Unit vectors [N, dim] for a preprocessed batch [N, 3, S, S]."""
        [out] = self.vision.run([self.manifest.output], {self.manifest.vision_input: batch})
        return np.asarray(out, dtype=np.float32)

    def embed_texts(self, texts: list[str]) -> NDArray[np.float32]:
        """Unit vectors [N, dim] for texts; TextSearchUnavailable without a text graph."""
        if self.text is None or self.tokenizer is None:
            raise TextSearchUnavailable(
                f"model {self.model_id} has no text encoder; text search is off"
            )
        length = self.manifest.context_length or 77
        ids, mask = self.tokenizer.encode_batch(texts, length, self.manifest.pad_token_id or 0)
        names = self.manifest.text_inputs
        [out] = self.text.run([self.manifest.output], {names[0]: ids, names[1]: mask})
        return np.asarray(out, dtype=np.float32)

"""Model export: PyTorch checkpoints to the ONNX graphs and manifest the embedder serves.

Used only at export time (scripts/export_clip.py, scripts/export_image_encoder.py); the
service reads the results through `embedder.manifest` and never imports torch. Every graph
takes float32 (or int64 token) inputs with a dynamic batch axis and returns float32,
L2-normalised `embeddings`, so the service needs no model-specific post-processing.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTokenizer,
    CLIPVisionConfig,
)
from transformers.utils.hub import cached_file

from embedder.manifest import Manifest, ModelFiles, Preprocess

OPSET = 18
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_CLUSTER_THRESHOLD = 0.72
TINY_CLIP_ID = "mammothbox/clip-tiny-random"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# PIL resample codes as written in Hugging Face image processor configs.
_RESAMPLE: dict[int, Literal["bicubic", "bilinear"]] = {2: "bilinear", 3: "bicubic"}
M = TypeVar("M", bound=nn.Module)


# --- graph wrappers ------------------------------------------------------------------------


def _eval(model: M) -> M:
    """nn.Module.eval: transformers overrides it without annotations."""
    nn.Module.eval(model)
    return model


def _half(model: M) -> M:
    """A float16 copy (the float32 original stays as it is)."""
    half = copy.deepcopy(model)
    nn.Module.half(half)
    return half


def _context_length(clip: CLIPModel) -> int:
    return cast(CLIPTextConfig, clip.config.text_config).max_position_embeddings


def _image_size(clip: CLIPModel) -> int:
    size = cast(CLIPVisionConfig, clip.config.vision_config).image_size
    return size if isinstance(size, int) else int(size[0])  # type: ignore[index]


def _pooled(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4 and a model output (pooler) in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ImageEncoder(nn.Module):
    """float32 pixels -> unit float32 embeddings; `features` runs in `dtype` (fp16 graphs)."""

    def __init__(self, features: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.features = features
        self.dtype = dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.features(pixel_values.to(self.dtype))
        return F.normalize(features.float(), dim=-1)


class ClipImageFeatures(nn.Module):
    """CLIP's projected image features."""

    def __init__(self, clip: CLIPModel) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _pooled(self.clip.get_image_features(pixel_values=pixel_values))


class ClipTextEncoder(nn.Module):
    """Token ids and mask -> unit float32 CLIP text embeddings."""

    def __init__(self, clip: CLIPModel) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(_pooled(output).float(), dim=-1)


def quiet_export_logs() -> None:
    """For the CLIs: hide the exporters' log noise that says nothing about our models."""
    # torch lists the torchvision ops it skips; onnxruntime suggests a pre-processing step
    # whose symbolic shape inference fails on these graphs.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger().addFilter(lambda record: "pre-processing" not in record.getMessage())


def export_onnx(module: nn.Module, inputs: dict[str, torch.Tensor], path: Path) -> Path:
    """Export `module` to ONNX with named inputs, a dynamic batch axis and `embeddings` out."""
    module.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        # Noise from inside torch's exporter, not about our model.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
        warnings.filterwarnings("ignore", message=r"# The axis name: batch will not be used")
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            input_names=list(inputs),
            output_names=["embeddings"],
            dynamic_shapes={name: {0: batch} for name in inputs},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return path


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8 quantisation of the weights (activations are quantised on the fly)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-tensor int8 ruins depthwise kernels and the first convolution (raw pixels):
    # EfficientNet-Lite2 embeddings fall to ~0.9 cosine with them quantised, ~0.98 without.
    convs = [node for node in onnx.load(source).graph.node if node.op_type == "Conv"]
    grouped = [
        node.name for node in convs if any(a.name == "group" and a.i > 1 for a in node.attribute)
    ]
    keep_float = [*grouped, convs[0].name] if convs else []
    quantize_dynamic(
        source, target, weight_type=QuantType.QInt8, nodes_to_exclude=sorted(set(keep_float))
    )
    return target


def _export_image_variants(
    features: nn.Module, size: int, out_dir: Path, *, fp16: bool, int8: bool
) -> ModelFiles:
    pixels = {"pixel_values": torch.randn(2, 3, size, size)}
    export_onnx(ImageEncoder(features), pixels, out_dir / "vision.onnx")
    vision_fp16 = vision_int8 = None
    if fp16:
        half = ImageEncoder(_half(features), torch.float16)
        vision_fp16 = export_onnx(half, pixels, out_dir / "vision_fp16.onnx").name
    if int8:
        vision_int8 = quantize_int8(out_dir / "vision.onnx", out_dir / "vision_int8.onnx").name
    return ModelFiles(vision="vision.onnx", vision_fp16=vision_fp16, vision_int8=vision_int8)


# --- CLIP ----------------------------------------------------------------------------------


def clip_tokenizer_pipeline(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """CLIP's byte-level BPE pipeline (the one transformers' CLIPTokenizer builds)."""
    tokenizer = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=EOT,
        )
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
                    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.RobertaProcessing(
        (EOT, vocab[EOT]), (SOT, vocab[SOT]), trim_offsets=False, add_prefix_space=False
    )
    return tokenizer


_TINY_CORPUS = (
    "a photo of a cat sitting on a sofa",
    "a black cat on a red sofa in the living room",
    "a dog running on the beach at sunset",
    "a cup of coffee on a wooden table",
    "an astronaut in a white space suit",
    "a screenshot of a document with text",
    "a photo of a mountain lake with trees",
    "two people walking in the city at night",
    "a close-up photo of a flower, 2024",
    "the invoice for order 12345 is attached",
)


def tiny_clip_tokenizer() -> Tokenizer:
    """A small CLIP-compatible tokenizer trained here on a few sentences (no download)."""
    trainer_model = Tokenizer(BPE(unk_token=EOT, end_of_word_suffix="</w>"))
    pipeline = clip_tokenizer_pipeline({SOT: 0, EOT: 1}, [])
    trainer_model.normalizer = pipeline.normalizer
    trainer_model.pre_tokenizer = pipeline.pre_tokenizer
    trainer = BpeTrainer(
        vocab_size=700,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
    )
    trainer_model.train_from_iterator(_TINY_CORPUS, trainer)
    merges = [tuple(m) for m in json.loads(trainer_model.to_str())["model"]["merges"]]
    # CLIP's layout: every byte alone and at a word's end, the merges, then the specials
    # (highest ids, which legacy CLIP pooling, argmax over ids, relies on).
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]
    vocab: dict[str, int] = {}
    for token in [*tokens, SOT, EOT]:
        vocab.setdefault(token, len(vocab))
    return clip_tokenizer_pipeline(vocab, [(a, b) for a, b in merges])


def tiny_clip(seed: int = 0, context_length: int = 16) -> tuple[CLIPModel, Tokenizer]:
    """A randomly initialised miniature CLIP and its tokenizer, for tests (no download)."""
    tokenizer = tiny_clip_tokenizer()
    eot, sot = tokenizer.token_to_id(EOT), tokenizer.token_to_id(SOT)
    config = CLIPConfig(
        text_config={
            "vocab_size": tokenizer.get_vocab_size(),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": context_length,
            "bos_token_id": sot,
            "eos_token_id": eot,
            "pad_token_id": eot,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    return _eval(CLIPModel(config)), tokenizer


def clip_preprocess(image_size: int, processor_config: dict[str, Any] | None = None) -> Preprocess:
    """CLIP preprocessing, from a checkpoint's preprocessor_config.json where there is one."""
    config = processor_config or {}
    size = config.get("size", image_size)
    crop = config.get("crop_size", image_size)
    return Preprocess(
        image_size=crop.get("height", image_size) if isinstance(crop, dict) else int(crop),
        resize="shortest_edge",
        resize_to=size.get("shortest_edge", image_size) if isinstance(size, dict) else int(size),
        interpolation=_RESAMPLE.get(config.get("resample", 3), "bicubic"),
        mean=tuple(config.get("image_mean", CLIP_MEAN)),
        std=tuple(config.get("image_std", CLIP_STD)),
        rescale=config.get("rescale_factor", 1 / 255),
    )


def load_clip(model: str) -> tuple[CLIPModel, Tokenizer, Preprocess]:
    """A CLIP checkpoint from a local directory or the Hugging Face cache, never the network."""
    clip = _eval(CLIPModel.from_pretrained(model, local_files_only=True))
    tokenizer = CLIPTokenizer.from_pretrained(model, local_files_only=True)
    config_file = cached_file(
        model,
        "preprocessor_config.json",
        local_files_only=True,
        _raise_exceptions_for_missing_entries=False,
    )
    processor_config = json.loads(Path(config_file).read_text()) if config_file else None
    preprocess = clip_preprocess(_image_size(clip), processor_config)
    return clip, Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()), preprocess


def hf_tokenizer(tokenizer_file: Path) -> CLIPTokenizer:
    """The transformers wrapper around a saved tokenizer.json (what export feeds torch)."""
    return CLIPTokenizer(tokenizer_file=str(tokenizer_file))


def export_clip(
    clip: CLIPModel,
    tokenizer: Tokenizer,
    out_dir: Path,
    *,
    model_id: str,
    source: str,
    preprocess: Preprocess,
    cluster_threshold: float | None,
    fp16: bool = True,
    int8: bool = True,
) -> Manifest:
    """Write vision/text graphs (+ fp16, int8 variants), tokenizer.json and the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _eval(clip)
    context_length = _context_length(clip)
    tokenizer = Tokenizer.from_str(tokenizer.to_str())  # a copy: padding is set below
    pad_token_id = tokenizer.token_to_id(EOT)
    # The service gets fixed-length ids and masks straight from tokenizer.json.
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.enable_padding(length=context_length, pad_id=pad_token_id, pad_token=EOT)
    tokenizer.save(str(out_dir / "tokenizer.json"))

    files = _export_image_variants(
        ClipImageFeatures(clip), preprocess.image_size, out_dir, fp16=fp16, int8=int8
    )
    encoded = hf_tokenizer(out_dir / "tokenizer.json")(
        ["a photo of a cat", "a cup of coffee on a table"],
        padding="max_length",
        truncation=True,
        max_length=context_length,
        return_tensors="pt",
    )
    tokens = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    export_onnx(ClipTextEncoder(clip), tokens, out_dir / "text.onnx")
    text_fp16 = None
    if fp16:
        half = ClipTextEncoder(_half(clip))
        text_fp16 = export_onnx(half, tokens, out_dir / "text_fp16.onnx").name
    manifest = Manifest(
        model_id=model_id,
        source=source,
        embedding_dim=clip.visual_projection.out_features,
        preprocess=preprocess,
        files=files.model_copy(
            update={"text": "text.onnx", "text_fp16": text_fp16, "tokenizer": "tokenizer.json"}
        ),
        context_length=context_length,
        pad_token_id=pad_token_id,
        cluster_threshold=cluster_threshold,
    )
    manifest.write(out_dir)
    return manifest


def export_tiny_clip(
    out_dir: Path, seed: int = 0, *, fp16: bool = True, int8: bool = True
) -> Manifest:
    """Export the random miniature CLIP (tests and bring-up; its vectors mean nothing)."""
    clip, tokenizer = tiny_clip(seed)
    return export_clip(
        clip,
        tokenizer,
        out_dir,
        model_id=TINY_CLIP_ID,
        source="random-tiny",
        preprocess=clip_preprocess(_image_size(clip)),
        cluster_threshold=None,
        fp16=fp16,
        int8=int8,
    )


def export_pretrained_clip(
    model: str,
    out_dir: Path,
    *,
    model_id: str | None = None,
    fp16: bool = True,
    int8: bool = True,
) -> Manifest:
    """Export a CLIP checkpoint found locally (a directory or the Hugging Face cache)."""
    clip, tokenizer, preprocess = load_clip(model)
    return export_clip(
        clip,
        tokenizer,
        out_dir,
        model_id=model_id or (Path(model).name if Path(model).is_dir() else model),
        source=model,
        preprocess=preprocess,
        cluster_threshold=CLIP_CLUSTER_THRESHOLD,
        fp16=fp16,
        int8=int8,
    )

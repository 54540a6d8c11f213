#!/usr/bin/env python3
"""Export a CLIP checkpoint to ONNX for the embedder: MODEL_DIR/<name>/ with vision.onnx,
text.onnx, their fp16 variants, vision_int8.onnx, tokenizer.json and manifest.json.

Nothing is downloaded: the checkpoint must be a local directory or already in the Hugging
Face cache. --tiny exports a randomly initialised miniature CLIP instead (tests, bring-up).

Usage: python scripts/export_clip.py [--model openai/clip-vit-base-patch32] [--out DIR]
       python scripts/export_clip.py --tiny --out /tmp/models/clip-tiny
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mammoth_export.export import export_pretrained_clip, export_tiny_clip, quiet_export_logs

DEFAULT_MODEL = "openai/clip-vit-base-patch32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local directory")
    parser.add_argument("--model-id", help="id recorded with every vector (default: --model)")
    parser.add_argument("--out", type=Path, help="output directory (default: MODEL_DIR/<name>)")
    parser.add_argument("--tiny", action="store_true", help="random miniature CLIP, no weights")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed for --tiny")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false", help="skip fp16 graphs")
    parser.add_argument(
        "--int8", action=argparse.BooleanOptionalAction, default=True, help="vision_int8.onnx"
    )
    args = parser.parse_args()
    quiet_export_logs()
    name = "clip-tiny" if args.tiny else Path(args.model).name
    out = args.out or Path(os.environ.get("MODEL_DIR", "models")) / name
    if args.tiny:
        manifest = export_tiny_clip(out, args.seed, fp16=args.fp16, int8=args.int8)
    else:
        manifest = export_pretrained_clip(
            args.model, out, model_id=args.model_id, fp16=args.fp16, int8=args.int8
        )
    print(f"exported {manifest.model_id} ({manifest.embedding_dim}-d) to {out}")


if __name__ == "__main__":
    main()

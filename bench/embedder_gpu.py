#!/usr/bin/env python3
"""Embedder on a GPU: CLIP ViT-B/32 fp32 and fp16 through onnxruntime's CUDA provider.

Prints, and writes as JSON to --out:
- model only: images/s at several batch sizes, with the batch coming from host memory (what
  the service does) and already on the GPU (IO binding: the model alone);
- the service's own pipeline without the bus and the database: DecoderPool workers decoding
  640x480 JPEGs (EXIF, thumbnail, pHash, preprocessing) into the ModelBatcher, images/s, and
  the decoders alone, so the ratio to model-only says which side limits.

Weights are random (no hub here): the speed is openai/clip-vit-base-patch32's, its vectors are
not. Needs torch and transformers (export), onnxruntime-gpu, pydantic, structlog, PyAV,
Pillow, scikit-image. Without CUDA it stops, unless --allow-cpu (for a dry run).

    python bench/embedder_gpu.py [--out results.json] [--seconds 3] [--images 2000]
"""

from __future__ import annotations

import sys

sys.path = [p for p in sys.path if not p.endswith("/bench")]  # `embedder` is the package

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "libs/common", ROOT / "services/embedder", ROOT / "tools/export"):
    sys.path.insert(0, str(folder))

from bench.photos import photo_jpegs
from embedder.decoder_pool import DecoderPool
from embedder.manifest import Manifest
from embedder.microbatch import ModelBatcher
from embedder.model import OnnxModel
from mammoth_export.export import ClipImageFeatures, _export_image_variants, clip_preprocess

BATCHES = (1, 8, 32, 128, 256, 512)


def export(directory: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig()).eval()  # the default config is ViT-B/32, 512-d
    directory.mkdir(parents=True, exist_ok=True)
    files = _export_image_variants(ClipImageFeatures(clip), 224, directory, fp16=True, int8=False)
    Manifest(
        model_id="bench/clip-vit-b32-random",
        source="random",
        embedding_dim=512,
        preprocess=clip_preprocess(224),
        files=files,
    ).write(directory)


def timed(run, seconds: float, per_call: int) -> float:  # type: ignore[no-untyped-def]
    run()
    run()
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        run()
        done += per_call
    return done / (time.perf_counter() - start)


def model_only(model: OnnxModel, seconds: float, on_gpu: bool) -> dict[str, dict[str, float]]:
    session = model.vision
    name, output = model.manifest.vision_input, model.manifest.output
    rates: dict[str, dict[str, float]] = {}
    for batch in BATCHES if on_gpu else BATCHES[:3]:
        pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), np.float32)
        host = timed(lambda p=pixels: session.run([output], {name: p}), seconds, batch)
        entry = {"host_input": host}
        if on_gpu:
            binding = session.io_binding()
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(pixels, "cuda", 0))
            binding.bind_output(output, "cuda", 0)

            def resident(b: ort.IOBinding = binding) -> None:
                session.run_with_iobinding(b)
                b.synchronize_outputs()

            entry["device_input"] = timed(resident, seconds, batch)
        rates[str(batch)] = entry
        print(f"  batch {batch:4d}: " + ", ".join(f"{k} {v:8.1f}/s" for k, v in entry.items()))
    return rates


def write_jpegs(directory: Path, count: int) -> list[str]:
    paths = []
    for i, jpeg in enumerate(photo_jpegs(count)):
        path = directory / f"{i}.jpg"
        path.write_bytes(jpeg)
        paths.append(str(path))
    return paths


async def pipeline(
    model: OnnxModel, paths: list[str], workers: int, max_batch: int
) -> dict[str, float]:
    pool = DecoderPool(
        model.manifest.preprocess, workers=workers, memory_limit_bytes=2**30, timeout_s=30
    )
    batcher = ModelBatcher(model, max_batch=max_batch, max_wait=0.01)
    await pool.start()
    batcher.start()
    in_flight = asyncio.Semaphore(4 * max_batch)  # like the consumer's prefetch

    async def decode(path: str) -> None:
        async with in_flight:
            await pool.decode(path, "image")

    async def both(path: str) -> None:
        async with in_flight:
            decoded = await pool.decode(path, "image")
            await batcher.embed_image(decoded.pixels)

    try:
        result = {}
        for label, step in (("decode_only", decode), ("decode_and_embed", both)):
            await asyncio.gather(*(step(p) for p in paths[: workers * 4]))  # warm up
            start = time.perf_counter()
            await asyncio.gather(*(step(p) for p in paths))
            result[label] = len(paths) / (time.perf_counter() - start)
        return result
    finally:
        await batcher.close()
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--decode-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--allow-cpu", action="store_true", help="a dry run without CUDA")
    args = parser.parse_args()
    available = ort.get_available_providers()
    on_gpu = "CUDAExecutionProvider" in available
    print(f"onnxruntime {ort.__version__} {available}; cores {os.cpu_count()}")
    if not on_gpu and not args.allow_cpu:
        sys.exit("no CUDAExecutionProvider in this onnxruntime (install onnxruntime-gpu)")
    results: dict[str, object] = {"onnxruntime": ort.__version__, "cores": os.cpu_count()}
    if on_gpu:
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* pip packages torch brought
        results["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "?"
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "clip-b32"
        export(models)
        jpegs = Path(tmp) / "jpegs"
        jpegs.mkdir()
        paths = write_jpegs(jpegs, args.images)
        for variant in ("fp32", "fp16"):
            model = OnnxModel(models, providers=("cuda", "cpu"), threads=2, variant=variant)
            print(f"\nViT-B/32 {variant} on {model.provider}, model only (images/s):")
            entry: dict[str, object] = {"provider": model.provider}
            entry["model_only"] = model_only(model, args.seconds, on_gpu)
            max_batch = 256 if on_gpu else 32
            entry["pipeline"] = asyncio.run(pipeline(model, paths, args.decode_workers, max_batch))
            print(
                f"  pipeline, {args.decode_workers} decoders, batches up to {max_batch}: "
                + ", ".join(f"{k} {v:.1f}/s" for k, v in entry["pipeline"].items())  # type: ignore[attr-defined]
            )
            results[variant] = entry
            del model
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Embedder throughput: ONNX beside PyTorch eager for the same weights, int8 and its accuracy
cost, and images/s through the whole service (decode included), in one run.

Models (no hub on these machines): CLIP ViT-B/32 with random weights (the architecture, hence
the speed, of openai/clip-vit-base-patch32) and EfficientNet-Lite2 with its real ImageNet
weights (for accuracy on real photos).

    .venv/bin/python bench/embedder.py [--threads 2] [--seconds 3] [--service-images 200]
        [--service-rounds 3] [--service-only | --decode-only]

The whole-service ratio alternates model-only and whole-service runs and reports the median
of the pairs: on a shared machine the model-only rate itself moves by a third within minutes.
"""

from __future__ import annotations

import sys

# This file is named like the `embedder` package; keep its folder off the import path.
sys.path = [p for p in sys.path if not p.endswith("/bench")]

import argparse
import asyncio
import io
import os
import random
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchdb import scratch_database
from bench.photos import held_out_photos, photo_jpegs, photos, variants
from embedder.manifest import Manifest, Preprocess
from embedder.preprocess import to_model_input
from mammoth_export.efficientnet import efficientnet_lite2, export_image_encoder
from mammoth_export.export import (
    ClipImageFeatures,
    ImageEncoder,
    export_onnx,
    quantize_int8,
)


def clip_b32(directory: Path) -> tuple[torch.nn.Module, Manifest]:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig()).eval()  # the default config is ViT-B/32, 512-d
    encoder = ImageEncoder(ClipImageFeatures(clip)).eval()
    directory.mkdir(parents=True, exist_ok=True)
    export_onnx(encoder, {"pixel_values": torch.randn(2, 3, 224, 224)}, directory / "vision.onnx")
    quantize_int8(directory / "vision.onnx", directory / "vision_int8.onnx")
    from mammoth_export.export import clip_preprocess

    manifest = Manifest(
        model_id="bench/clip-vit-b32-random",
        source="random",
        embedding_dim=512,
        preprocess=clip_preprocess(224),
    )
    manifest = manifest.model_copy(
        update={"files": manifest.files.model_copy(update={"vision_int8": "vision_int8.onnx"})}
    )
    manifest.write(directory)
    return encoder, manifest


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def rate(run, batch: np.ndarray, seconds: float) -> float:  # type: ignore[no-untyped-def]
    run(batch)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 2 * len(batch):
        run(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def speed(
    name: str, module: torch.nn.Module, directory: Path, size: int, threads: int, seconds: float
) -> None:
    torch.set_num_threads(threads)
    fp32, int8 = (
        session(directory / "vision.onnx", threads),
        session(directory / "vision_int8.onnx", threads),
    )
    print(f"\n{name}: images/s on the CPU, {threads} threads")
    print(
        f"{'batch':>5} {'torch fp32':>11} {'onnx fp32':>10} {'onnx int8':>10} "
        f"{'fp32/torch':>11} {'int8/torch':>11}"
    )
    for batch_size in (1, 8, 32):
        batch = (
            np.random.default_rng(0).standard_normal((batch_size, 3, size, size)).astype(np.float32)
        )
        with torch.inference_mode():
            eager = rate(lambda b: module(torch.from_numpy(b)), batch, seconds)
        onnx32 = rate(lambda b: fp32.run(None, {"pixel_values": b}), batch, seconds)
        onnx8 = rate(lambda b: int8.run(None, {"pixel_values": b}), batch, seconds)
        print(
            f"{batch_size:>5} {eager:>11.1f} {onnx32:>10.1f} {onnx8:>10.1f} "
            f"{onnx32 / eager:>10.2f}x {onnx8 / eager:>10.2f}x",
            flush=True,
        )


def accuracy(name: str, directory: Path, preprocess: Preprocess, threads: int) -> None:
    fp32_session = session(directory / "vision.onnx", threads)
    int8_session = session(directory / "vision_int8.onnx", threads)
    sets = (("calibration photos", photos(), 1), ("held-out photos", held_out_photos(), 3))
    for label, originals, seed in sets:
        rng = random.Random(seed)
        images, source = [], []
        for index, photo in enumerate(originals):
            for image in [photo, *variants(photo, rng, 5)]:
                images.append(image)
                source.append(index)
        batch = np.stack([to_model_input(image, preprocess) for image in images])
        fp32 = fp32_session.run(None, {"pixel_values": batch})[0]
        int8 = int8_session.run(None, {"pixel_values": batch})[0]
        cosine = np.sum(fp32 * int8, axis=1)
        n32, n8 = neighbours(fp32), neighbours(int8)
        origin = np.asarray(source)
        correct = float(np.mean(origin[n32] == origin)), float(np.mean(origin[n8] == origin))
        print(
            f"\n{name} int8 vs fp32, {label}: {len(originals)} photos and 5 crops/flips of "
            f"each ({len(images)} images): cosine mean {cosine.mean():.4f} min "
            f"{cosine.min():.4f}; nearest neighbour: same image {np.mean(n32 == n8):.3f}, "
            f"from the same photo {np.mean(origin[n32] == origin[n8]):.3f}; neighbour is a "
            f"variant of the same photo: fp32 {correct[0]:.3f}, int8 {correct[1]:.3f}"
        )


def neighbours(vectors: np.ndarray) -> np.ndarray:
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argmax(similarity, axis=1)


async def service_rate(
    models: Path, name: str, count: int, threads: int, decode_workers: int, batch_wait_ms: float
) -> float:
    """Images/s from publishing media.ingested to every content row reaching `embedded`."""
    import asyncpg

    from common.bus import Bus
    from common.messages import MediaIngested
    from common.storage.filesystem import FileSystemStorage
    from embedder.app import running
    from embedder.settings import EmbedderSettings

    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="mb-bench-") as tmp:
        async with scratch_database("mb_bench_embedder") as database:
            settings = EmbedderSettings(
                database_url=database,
                storage_path=Path(tmp),
                bus_exchange=f"bench-{tag}",
                bus_queue_prefix=f"bench-{tag}.",
                model_dir=models,
                embedding_model=name,
                onnx_providers=("cpu",),
                intra_op_threads=threads,
                max_batch_size=32,
                max_batch_wait_ms=batch_wait_ms,
                decode_workers=decode_workers,
                worker_http_host="127.0.0.1",
                worker_http_port=0,
            )
            try:
                storage = FileSystemStorage(Path(tmp), fsync=False)
                conn = await asyncpg.connect(database)
                job = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO jobs (id, owner, request_id) VALUES ($1, 'bench', 'b')", job
                )
                events = []
                for jpeg in photo_jpegs(count):
                    stored = await storage.put(_once(jpeg))
                    cid = uuid.uuid4()
                    await conn.execute(
                        """INSERT INTO content (id, sha256, kind, mime_type, size_bytes,
                                                storage_key, first_job_id)
                           VALUES ($1, $2, 'image', 'image/jpeg', $3, $4, $5)""",
                        cid,
                        stored.sha256,
                        stored.size,
                        stored.key,
                        job,
                    )
                    events.append(
                        MediaIngested(
                            content_id=cid,
                            job_id=job,
                            sha256=stored.sha256,
                            kind="image",
                            mime_type="image/jpeg",
                            size_bytes=stored.size,
                        )
                    )
                async with running(settings) as deps:
                    elapsed = await _time_service(deps, conn, events)
                await conn.close()
                return count / elapsed
            finally:
                bus = Bus(settings)
                await bus.start(wait=5)
                if bus.connection is not None:
                    channel = await bus.connection.channel()
                    for spec in bus.specs:
                        for queue in (spec.name, spec.parking, *(spec.delay(i) for i in (1, 2, 3))):
                            await channel.queue_delete(queue)
                    await channel.exchange_delete(settings.bus_exchange)
                await bus.close()


async def _time_service(deps, conn, events) -> float:  # type: ignore[no-untyped-def]
    """Publish every event, wait until no content is left `ingested`; seconds, and a report."""
    count = len(events)
    await deps.bus.wait_connected(10)
    batches_before = batch_counts()
    start, cpu_before = time.perf_counter(), cpu_seconds()
    for event in events:
        await deps.bus.publish(
            event.routing_key, event.to_bytes(), message_id=str(event.message_id)
        )
    while await conn.fetchval("SELECT count(*) FROM content WHERE stage = 'ingested'") > 0:
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - start
    cpu_after = cpu_seconds()
    for group, used in sorted(cpu_after.items()):
        per_image = (used - cpu_before.get(group, 0.0)) / count * 1000
        print(f"  cpu {group}: {per_image:.1f} ms per image")
    batches, items = np.subtract(batch_counts(), batches_before)
    if batches:
        print(f"service: {items:.0f} images in {batches:.0f} batches (mean {items / batches:.1f})")
    failed = await conn.fetchval("SELECT count(*) FROM content WHERE stage = 'failed'")
    if failed:
        print(f"warning: {failed} images failed")
    return elapsed


def batch_counts() -> tuple[float, float]:
    """Image batches run and images in them so far (this process's embedder metrics)."""
    from prometheus_client import REGISTRY

    labels = {"input": "image"}
    return (
        REGISTRY.get_sample_value("embedder_batch_size_count", labels) or 0.0,
        REGISTRY.get_sample_value("embedder_batch_size_sum", labels) or 0.0,
    )


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process, its descendants and the servers, by group."""
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    stats: dict[int, tuple[int, float, str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().decode(errors="replace")
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        stats[int(pid)] = (int(fields[1]), used, command)

    def descends(pid: int) -> bool:
        while pid > 1 and pid in stats:
            pid = stats[pid][0]
            if pid == me:
                return True
        return False

    groups: dict[str, float] = {}
    for pid, (_, used, command) in stats.items():
        if pid == me:
            group = "embedder process (event loop, inference)"
        elif descends(pid):
            group = "decoder processes"  # forkserver children (the forkserver itself is idle)
        elif "postgres" in command:
            group = "postgresql"
        elif "beam.smp" in command:
            group = "rabbitmq"
        else:
            continue
        groups[group] = groups.get(group, 0.0) + used
    return groups


async def _once(data: bytes):  # type: ignore[no-untyped-def]
    yield data


def onnx_rate(path: Path, batch: np.ndarray, args: argparse.Namespace) -> float:
    """Model-only images/s; the session is gone before the service loads its own."""
    fp32 = session(path, args.threads)
    return rate(lambda b: fp32.run(None, {"pixel_values": b}), batch, args.seconds)


def whole_service(models: Path, args: argparse.Namespace) -> float:
    """Images/s through the embedder service on the CLIP ViT-B/32 export."""
    return asyncio.run(
        service_rate(
            models,
            "clip-b32",
            args.service_images,
            args.threads,
            args.decode_workers,
            args.batch_wait_ms,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--service-images", type=int, default=200)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--service-rounds", type=int, default=3)
    parser.add_argument("--service-only", action="store_true", help="only the service ratio")
    parser.add_argument("--decode-only", action="store_true", help="only the decode costs")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, onnxruntime {ort.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        clip, clip_manifest = clip_b32(models / "clip-b32")
        if args.decode_only:
            decode_costs(clip_manifest.preprocess)
            return
        if args.service_only:
            service_ratio(models, args)
            return
        export_image_encoder(models / "lite2", fp16=False)
        lite2 = ImageEncoder(efficientnet_lite2()).eval()
        speed(
            "CLIP ViT-B/32 (random weights)",
            clip,
            models / "clip-b32",
            224,
            args.threads,
            args.seconds,
        )
        speed(
            "EfficientNet-Lite2 (ImageNet weights)",
            lite2,
            models / "lite2",
            260,
            args.threads,
            args.seconds,
        )
        accuracy(
            "EfficientNet-Lite2",
            models / "lite2",
            Manifest.read(models / "lite2").preprocess,
            args.threads,
        )
        accuracy(
            "CLIP ViT-B/32 (random weights)",
            models / "clip-b32",
            clip_manifest.preprocess,
            args.threads,
        )
        decode_costs(clip_manifest.preprocess)
        service_ratio(models, args)


def decode_costs(preprocess: Preprocess) -> None:
    """CPU per decode_image (facts, thumbnail, pHash, model input), JPEGs reduced on load or not."""
    import embedder.decode as decode

    big = photos()[0].resize((4000, 3000), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    print(f"\ndecode_image, CPU ms per image ({preprocess.image_size} px model input)")
    print("photo                reduced     full")
    reduce_on_load = decode.reduce_on_load
    with tempfile.TemporaryDirectory() as tmp:
        for name, data, repeat in (
            ("640x480 JPEG", photo_jpegs(1)[0], 40),
            ("4000x3000 JPEG", buffer.getvalue(), 4),
        ):
            path = os.path.join(tmp, "photo.jpg")
            Path(path).write_bytes(data)
            costs = []
            for reducer in (reduce_on_load, lambda *_: None):
                decode.reduce_on_load = reducer  # type: ignore[assignment]
                decode.decode_image(path, preprocess)  # warm
                start = time.process_time()
                for _ in range(repeat):
                    decode.decode_image(path, preprocess)
                costs.append((time.process_time() - start) / repeat * 1000)
            decode.reduce_on_load = reduce_on_load
            print(f"{name:<16} {costs[0]:9.1f} {costs[1]:8.1f}")


def service_ratio(models: Path, args: argparse.Namespace) -> None:
    """Model-only at the service's batch size, then the whole service, in alternating rounds."""
    batch = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
    ratios = []
    for round_ in range(1, args.service_rounds + 1):
        model_only = onnx_rate(models / "clip-b32" / "vision.onnx", batch, args)
        whole = whole_service(models, args)
        ratios.append(whole / model_only)
        print(
            f"\nround {round_}: CLIP ViT-B/32 fp32, batch 32: model only {model_only:.1f} "
            f"images/s; whole service (decode, thumbnail, pHash, writes; "
            f"{args.service_images} JPEGs 640x480) {whole:.1f} images/s = "
            f"{whole / model_only:.0%} of model-only"
        )
    print(f"\nwhole service / model only, median of {len(ratios)}: {np.median(ratios):.0%}")


if __name__ == "__main__":
    main()

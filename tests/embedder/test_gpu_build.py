"""The embedder as GPU machines install it: onnxruntime-gpu, in its own environment.

scripts/bootstrap.sh builds `.venv-gpu` with the `embedder-gpu` extra. Here, without a usable
GPU, that build must still serve: CUDA is asked for, is not usable, the service says so and
runs on the CPU with the same vectors. Where a GPU is usable the same test expects CUDA.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import numpy as np
import orjson
import pytest

from embedder.decode import decode_image
from embedder.model import OnnxModel
from tests.conftest import BusNames, service_env
from tests.embedder.test_embedder_service import (
    content_of,
    jpeg_of,
    sample,
    upload,
    wait_stage,
)
from tests.integration.conftest import Gateway
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
GPU_PYTHON = ROOT / ".venv-gpu" / "bin" / "python"
# A usable GPU needs the NVIDIA driver; without it the CUDA provider cannot load.
HAS_GPU = Path("/dev/nvidiactl").exists()


def gpu_python() -> str:
    assert GPU_PYTHON.exists(), "no .venv-gpu: scripts/bootstrap.sh builds it"
    return str(GPU_PYTHON)


def test_gpu_build_has_onnxruntime_gpu_alone_with_the_cuda_provider() -> None:
    probe = (
        "import importlib.metadata as m, json, onnxruntime as ort\n"
        "names = sorted(d.metadata['Name'] for d in m.distributions())\n"
        "print(json.dumps({'names': names, 'providers': ort.get_available_providers()}))\n"
    )
    result = subprocess.run(
        [gpu_python(), "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    found = orjson.loads(result.stdout)
    assert "onnxruntime-gpu" in found["names"]
    assert "onnxruntime" not in found["names"]  # the two must never share an environment
    assert "torch" not in found["names"]  # export-time only, never in a service image
    assert "CUDAExecutionProvider" in found["providers"]


@pytest.fixture
def gpu_embedder(
    database_url: str, bus_names: BusNames, storage_path: Path, tiny_clip_dir: Path, tmp_path: Path
) -> Iterator[tuple[int, Path]]:
    """`python -m embedder` from .venv-gpu, CUDA first; its probe port and its log."""
    port, log_path = free_port(), tmp_path / "embedder.log"
    env = service_env(
        database_url,
        bus_names,
        storage_path,
        MODEL_DIR=str(tiny_clip_dir),
        EMBEDDING_MODEL="clip-tiny",
        ONNX_PROVIDERS="cuda,cpu",
        INTRA_OP_THREADS="1",
        DECODE_WORKERS="1",
        WORKER_HTTP_HOST="127.0.0.1",
        WORKER_HTTP_PORT=str(port),
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [gpu_python(), "-m", "embedder"], env=env, stdout=log, stderr=log, cwd=tmp_path
        )
        try:
            yield port, log_path
        finally:
            process.terminate()
            process.wait(timeout=20)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def test_gpu_build_embeds_on_the_usable_provider_with_the_cpu_builds_vectors(
    gpu_embedder: tuple[int, Path],
    gateway: Gateway,
    db: asyncpg.Connection,
    tiny_clip_dir: Path,
    storage_path: Path,
) -> None:
    port, log_path = gpu_embedder
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(600):  # model load and decoder start-up, on a busy machine
            try:
                if (await get_json(session, f"{base}/ready"))[0] == 200:
                    break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"the GPU build never got ready:\n{log_path.read_text()}")
        status, health = await get_json(session, f"{base}/health")
    expected = "CUDAExecutionProvider" if HAS_GPU else "CPUExecutionProvider"
    assert status == 200 and health["provider"] == expected, health
    log = log_path.read_text()
    if not HAS_GPU:  # it says why it is not on the GPU it was asked for
        assert "execution provider not usable" in log and "CUDAExecutionProvider" in log, log

    [upload_id] = await upload(gateway, ("cat.jpg", jpeg_of(sample("chelsea"))))
    [row] = await wait_stage(db, [upload_id], {"embedded"}, timeout=60)
    stored = await db.fetchval(
        "SELECT embedding::text FROM embeddings WHERE content_id = $1", row["id"]
    )
    vector = np.asarray(orjson.loads(stored), dtype=np.float32)

    # The same file through the CPU build in this process.
    path = storage_path / (await content_of(db, upload_id))["storage_key"]
    cpu_build = OnnxModel(tiny_clip_dir / "clip-tiny", providers=("cpu",))
    decoded = decode_image(str(path), cpu_build.manifest.preprocess)
    reference = cpu_build.embed_images(decoded.pixels[None])[0]
    tolerance = 1e-3 if HAS_GPU else 1e-5  # GPU kernels sum in another order
    np.testing.assert_allclose(vector, reference, atol=tolerance)

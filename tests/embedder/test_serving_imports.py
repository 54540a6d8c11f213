"""The embedder serves without the export stack: no module of it pulls in torch or onnx.

Export lives in tools/export/mammoth_export; the service and its image carry only
onnxruntime, tokenizers, Pillow and PyAV. A fresh interpreter imports every module of the
`embedder` package and reports what export-time packages got loaded: in `.venv` (which has
them installed, so only an import would load them) and in `.venv-gpu` (which has none).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPORT_ONLY = ("torch", "transformers", "onnx", "onnxscript", "skimage", "mammoth_export")
# Every module of the package, __main__ included (it only runs under `python -m`).
PROBE = f"""
import importlib, json, pkgutil, sys
import embedder
names = [m.name for m in pkgutil.walk_packages(embedder.__path__, "embedder.")]
for name in names:
    importlib.import_module(name)
loaded = sorted({{n.split(".")[0] for n in sys.modules}} & set({EXPORT_ONLY!r}))
print(json.dumps({{"modules": names, "loaded": loaded}}))
"""


@pytest.mark.parametrize("venv", [".venv", ".venv-gpu"])
def test_embedder_package_loads_no_export_stack_when_every_module_is_imported(
    venv: str, tmp_path: Path
) -> None:
    python = ROOT / venv / "bin" / "python"
    assert python.exists(), f"no {venv}: scripts/bootstrap.sh builds it"
    # Run outside the checkout so only the installed packages are on the path.
    result = subprocess.run(
        [str(python), "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    found = orjson.loads(result.stdout)
    assert "embedder.model" in found["modules"] and "embedder.__main__" in found["modules"]
    assert found["loaded"] == [], f"{venv}: embedder imports export-time {found['loaded']}"

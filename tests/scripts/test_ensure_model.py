"""scripts/ensure_model.sh: a model already there is kept; a missing EfficientNet-Lite2 is
exported into a folder beside it and renamed into place; any other missing model is an error
that says what to do. The exporter itself is tested in tests/embedder; here PYTHON is a
stand-in that writes what the exporter writes, or fails."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts/ensure_model.sh"


def run(models: Path, model: str, python: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"MODEL_DIR": str(models), "EMBEDDING_MODEL": model}
    if python is not None:
        env["PYTHON"] = str(python)
    return subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def exporter(tmp_path: Path, *, fails: bool = False) -> Path:
    """A PYTHON that takes `scripts/export_image_encoder.py --out DIR` and writes a manifest."""
    fake = tmp_path / "python"
    body = "exit 3" if fails else 'mkdir -p "$3" && echo "{}" > "$3/manifest.json"'
    fake.write_text(f'#!/bin/sh\n[ "$1" = scripts/export_image_encoder.py ] || exit 9\n{body}\n')
    fake.chmod(0o755)
    return fake


def test_a_model_that_is_there_is_kept(tmp_path: Path) -> None:
    (tmp_path / "m/clip").mkdir(parents=True)
    (tmp_path / "m/clip/manifest.json").write_text("{}")
    done = run(tmp_path / "m", "clip")
    assert done.returncode == 0 and "model clip is in" in done.stdout


def test_a_missing_model_other_than_lite2_is_an_error(tmp_path: Path) -> None:
    done = run(tmp_path / "m", "clip-vit-base-patch32")
    assert done.returncode == 1
    assert "export it first" in done.stderr


def test_lite2_is_exported_and_put_in_place(tmp_path: Path) -> None:
    done = run(tmp_path / "m", "efficientnet-lite2", exporter(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m/efficientnet-lite2/manifest.json").exists()
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["efficientnet-lite2"]


def test_a_failed_export_leaves_no_model(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    done = run(tmp_path / "m", "efficientnet-lite2", exporter(tmp_path, fails=True))
    assert done.returncode != 0
    assert list((tmp_path / "m").iterdir()) == []  # nor half of one

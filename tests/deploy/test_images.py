"""The Dockerfile, checked without a Docker engine: hadolint passes; every COPY source exists
and survives .dockerignore, while nothing else (virtual environments, models, the run
directory, tests) reaches the build context; the images run as a non-root user with a health
check; and each image's install line resolves, in a scratch virtual environment, against the
package registry."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths

from tests.deploy.tools import ROOT, binary, run

DOCKERFILE = ROOT / "Dockerfile"
SERVICES = ("gateway", "embedder", "clusterer", "analyzer", "schemer")
# The PyTorch CPU index the export image installs torch from is not reachable here (only the
# package registries are): its line is resolved against PyPI, whose torch has the same version.
REACHABLE_TORCH_INDEX = "https://pypi.org/simple"
# What the images copy from the context (the Dockerfile itself always travels).
CONTEXT_TOPS = {"pyproject.toml", "README.md", "libs", "services", "tools", "scripts"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for word, args in self.instructions if word == keyword]


@functools.cache
def stages() -> dict[str, Stage]:
    """The Dockerfile's stages, each with its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, args = line.partition(" ")
        if word == "FROM":
            base, _, name = args.partition(" AS ")
            current = found.setdefault(name, Stage(name, base))
        elif current is not None:
            current.instructions.append((word, " ".join(args.split())))
    return found


@functools.cache
def build_args() -> dict[str, str]:
    """Global ARG defaults (before the first FROM)."""
    head = DOCKERFILE.read_text().split("\nFROM ", 1)[0]
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", head, re.M))


def test_hadolint_passes() -> None:
    done = run([binary("hadolint"), "Dockerfile"])
    assert done.returncode == 0, done.stdout + done.stderr


def test_base_images_are_pinned() -> None:
    for name, value in build_args().items():
        if name.endswith("_IMAGE"):
            assert ":" in value and not value.endswith(":latest"), (name, value)


@functools.cache
def context() -> frozenset[str]:
    """Every path of the build context that .dockerignore lets through."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return frozenset(exclude_paths(str(ROOT), patterns))


def copy_sources() -> list[str]:
    sources = []
    for stage in stages().values():
        for args in stage.all("COPY"):
            words = shlex.split(args)
            if any(w.startswith("--from=") for w in words):
                continue
            sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def test_every_copy_source_exists_and_survives_dockerignore() -> None:
    sources = copy_sources()
    assert "pyproject.toml" in sources and "scripts/migrate.py" in sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file"
        if path.is_dir():
            inside = [p for p in context() if p.startswith(f"{source}/")]
            assert inside, f"COPY {source}: .dockerignore excludes all of it"
        else:
            assert source in context(), f"COPY {source}: .dockerignore excludes it"
    # What the packages need at run time travels too.
    assert any(p.endswith(".sql") for p in context() if p.startswith("libs/common/"))


def test_build_context_holds_nothing_else() -> None:
    for path in context():
        top = path.split("/")[0]
        assert top in {"Dockerfile", ".dockerignore", *CONTEXT_TOPS}, path
        assert "__pycache__" not in path and not path.endswith(".pyc"), path
        assert ".egg-info" not in path, path
        assert not path.endswith(".onnx"), path
    assert not any(p.startswith(("tests", ".venv", ".run", "models")) for p in context())


@pytest.mark.parametrize("target", ["service", "embedder-gpu", "export", "backup"])
def test_images_run_as_non_root(target: str) -> None:
    stage = stages()[target]
    (user,) = stage.all("USER")
    assert user.split(":")[0] not in {"0", "root"}
    assert int(user.split(":")[0]) >= 10000


@pytest.mark.parametrize("target", ["service", "embedder-gpu"])
def test_service_images_check_their_health(target: str) -> None:
    (check,) = stages()[target].all("HEALTHCHECK")
    assert '"common.healthcheck"' in check
    # The model is never baked in: a volume (MODEL_DIR) holds it.
    assert not any("models" in a and "onnx" in a for a in stages()[target].all("COPY"))


def install_lines() -> list[tuple[str, list[str]]]:
    """Each `uv pip install` line of the Dockerfile as (stage, its arguments), with the build
    arguments filled in: one line per service for the parameterised one."""
    lines = []
    for stage in stages().values():
        for args in stage.all("RUN"):
            for command in args.split("&&"):
                words = shlex.split(command)
                if words[:3] != ["uv", "pip", "install"]:
                    continue
                words = words[3:]
                if "--python" in words:  # the image's own venv; the test brings a scratch one
                    at = words.index("--python")
                    del words[at : at + 2]
                text = " ".join(words).replace("${TORCH_INDEX_URL}", REACHABLE_TORCH_INDEX)
                if "${SERVICE}" in text:
                    lines += [
                        (f"{stage.name}:{s}", text.replace("${SERVICE}", s).split())
                        for s in SERVICES
                    ]
                else:
                    lines.append((stage.name, text.split()))
    return lines


def test_install_lines_cover_every_image() -> None:
    names = {name for name, _ in install_lines()}
    assert names == {*(f"build:{s}" for s in SERVICES), "gpu-build", "export", "backup-build"}


@pytest.mark.parametrize("name,args", install_lines(), ids=[n for n, _ in install_lines()])
def test_install_line_resolves(name: str, args: list[str], tmp_path: Path) -> None:
    scratch = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(scratch)], check=True)
    done = run(
        [
            binary("uv"),
            "pip",
            "install",
            "--dry-run",
            "--python",
            str(scratch / "bin/python"),
            *args,
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Would install" in done.stderr, done.stderr[-3000:]
    if "embedder-gpu" in " ".join(args):
        assert "+ onnxruntime-gpu==" in done.stderr and "+ onnxruntime==" not in done.stderr


def test_backup_image_has_the_servers_client_tools() -> None:
    stage = stages()["backup"]
    assert build_args()["POSTGRES_IMAGE"].startswith("postgres:18")  # the server's major
    env = " ".join(stage.all("ENV"))
    assert "PG_BIN=/usr/lib/postgresql/18/bin" in env
    assert stage.all("ENTRYPOINT") == ['["python", "-m", "gateway.backup"]']

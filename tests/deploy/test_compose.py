"""docker-compose.yml, checked with the real Compose binary (no Docker engine runs here):
every profile renders, and the rendered file keeps the promises users rely on."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.tools import COMPOSE_SECRETS, ROOT, binary, compose, run

PROFILES = (
    (),
    ("gpu",),
    ("observability",),
    ("backup",),
    ("s3",),
    ("gpu", "observability", "backup", "s3"),
)
APP = ("gateway", "embedder", "clusterer", "analyzer", "schemer")
# One-off steps: no health check, they run to the end.
ONE_OFF = {"migrate", "models"}
# The collector's image has no shell or HTTP client to check itself with (the file says so).
NO_HEALTHCHECK = ONE_OFF | {"otel-collector"}


@functools.cache
def config(*profiles: str) -> dict[str, Any]:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    done = compose(*args, "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
def test_every_profile_renders(profiles: tuple[str, ...]) -> None:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    done = compose(*args, "config", "--quiet")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("missing", sorted(COMPOSE_SECRETS))
def test_passwords_are_required(missing: str) -> None:
    done = compose("config", "--quiet", without=missing)
    assert done.returncode != 0
    assert f"set {missing} in .env" in done.stderr


def test_names_users_know() -> None:
    full = config("gpu", "observability")
    assert full["name"] == "mammothbox"
    assert full["networks"]["app_network"]["name"] == "mammothbox_app_network"
    assert full["services"]["postgres"]["environment"]["POSTGRES_DB"] == "file_allocator"
    for name in APP:
        url = full["services"][name]["environment"]["DATABASE_URL"]
        assert url.endswith("@postgres:5432/file_allocator"), name
        assert full["services"][name]["environment"]["RABBITMQ_URL"].endswith("@rabbitmq:5672/")
    assert set(config()["services"]) == {"postgres", "rabbitmq", "migrate", "models", *APP}


def test_health_checks_and_start_order() -> None:
    services = config("gpu", "observability")["services"]
    for name, service in services.items():
        if name in NO_HEALTHCHECK:
            continue
        # The services' checks come from their images (HEALTHCHECK: common.healthcheck).
        if name in APP or name == "embedder-gpu":
            assert "healthcheck" not in service or not service["healthcheck"].get("disable")
        else:
            assert service["healthcheck"]["test"], name
    for name in ("postgres", "rabbitmq"):
        assert services["migrate"]["depends_on"][name]["condition"] == "service_healthy"
    for name in (*APP, "embedder-gpu"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["stop_grace_period"] == "30s", name
        assert services[name]["read_only"] is True, name
    for name in ("embedder", "embedder-gpu"):
        assert services[name]["depends_on"]["models"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["migrate"]["command"] == ["python", "scripts/migrate.py"]


def test_data_is_kept_in_volumes() -> None:
    services = config()["services"]
    mounts = {
        name: {v["target"]: v["source"] for v in s.get("volumes", []) if v["type"] == "volume"}
        for name, s in services.items()
    }
    assert mounts["postgres"]["/var/lib/postgresql"] == "pgdata"
    assert mounts["rabbitmq"]["/var/lib/rabbitmq"] == "rabbitmq"
    for name in ("gateway", "embedder", "clusterer", "analyzer"):
        assert mounts[name]["/data/storage"] == "storage", name
    assert mounts["models"]["/models"] == mounts["embedder"]["/models"] == "models"


def test_s3_profile_creates_the_bucket_before_the_services_start() -> None:
    full = config("s3")
    assert full["services"]["s3-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mb --ignore-existing" in full["services"]["s3-bucket"]["command"][0]
    assert full["services"]["minio"]["volumes"][0]["source"] == "minio"
    for name in APP:
        needs = full["services"][name]["depends_on"]["s3-bucket"]
        assert needs == {"condition": "service_completed_successfully", "required": False}
    # Without the profile, the services start as before (the dependency is not required).
    assert "minio" not in config()["services"]


def test_gpu_profile_gives_the_embedder_the_gpu() -> None:
    gpu = config("gpu")["services"]["embedder-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["ONNX_PROVIDERS"] == "cuda,cpu"
    assert gpu["build"]["target"] == "embedder-gpu"


def test_observability_profile_mounts_files_that_exist() -> None:
    services = config("observability")["services"]
    for name in ("otel-collector", "jaeger", "prometheus", "grafana"):
        assert name in services
        for volume in services[name].get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), (name, volume["source"])


def test_builds_name_targets_of_the_dockerfile() -> None:
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.M))
    for name, service in config("gpu")["services"].items():
        build = service.get("build")
        if build is None:
            continue
        assert build.get("target", "service") in stages, name
        if build.get("target", "service") == "service":
            assert build["args"]["SERVICE"] == (name if name != "migrate" else "gateway")


def test_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    # Mounted as the compose file mounts it: the config with the two rule files beside it.
    shutil.copy(ROOT / "deploy/compose/prometheus.yml", tmp_path / "prometheus.yml")
    for rules in ("recording.yml", "alerts.yml"):
        shutil.copy(ROOT / "deploy/monitoring" / rules, tmp_path / rules)
    done = subprocess.run(
        [binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_env_example_is_current_and_complete() -> None:
    done = run([binary("python"), "scripts/env_example.py", "--check"])
    assert done.returncode == 0, done.stderr
    example = (ROOT / ".env.example").read_text()
    written = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, re.M))
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    assert used <= written, used - written


# Verbs whose first argument (after options) is a service of the compose file, and those
# whose every argument is one.
FIRST_IS_SERVICE = {"exec", "run", "port", "top"}
ALL_ARE_SERVICES = {"logs", "restart", "up", "stop", "start", "ps", "kill", "rm"}


def compose_commands() -> list[list[str]]:
    """Each `docker compose ...` line of docs/troubleshooting.md's ```bash compose blocks."""
    guide = (ROOT / "docs/troubleshooting.md").read_text()
    blocks = re.findall(r"^```bash compose\n(.*?)^```", guide, re.M | re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("docker compose ")]


def test_troubleshooting_compose_commands_name_real_services() -> None:
    commands = compose_commands()
    assert len(commands) >= 10, "the guide has compose variants for each section"
    services = set(config("gpu", "observability", "backup")["services"])
    named = set()
    for words in commands:
        words = words[2:]
        while words and words[0].startswith("-"):  # docker compose --profile x ...
            words = words[2:] if words[0] in {"--profile", "-f"} else words[1:]
        verb, rest = words[0], words[1:]
        if verb not in FIRST_IS_SERVICE | ALL_ARE_SERVICES:
            continue
        # Options come first (the guide writes their values with `=`); then the services, or
        # for exec/run/port/top one service and its command.
        for word in rest:
            if word in {"&&", "|", ";"}:
                break
            if word.startswith("-"):
                continue
            assert word in services, f"docker compose {verb} {word}: no such service"
            named.add(word)
            if verb in FIRST_IS_SERVICE:
                break
    assert {"gateway", "postgres", "rabbitmq"} <= named
    guide = (ROOT / "docs/troubleshooting.md").read_text()
    assert "docker network inspect mammothbox_app_network" in guide


def test_backup_service_waits_for_the_database_only() -> None:
    backup = config("backup")["services"]["backup"]
    assert backup["build"]["target"] == "backup"
    # A restore needs the database empty: not after `migrate`, which would fill it.
    assert set(backup["depends_on"]) == {"postgres"}
    targets = {v["target"]: v for v in backup["volumes"]}
    assert targets["/data/storage"]["source"] == "storage"
    assert targets["/backups"]["type"] == "bind"
    assert backup["environment"]["DATABASE_URL"].endswith("@postgres:5432/file_allocator")

"""deploy/k8s, checked without a cluster: every overlay builds with kustomize, passes strict
schema validation for Kubernetes 1.30 (the operators' kinds against their published CRD
schemas in tests/deploy/crds), and keeps the promises the services rely on: KEDA triggers
taken from the bus topology, probes on the port each service listens on, limits, the
restricted security context, every required variable set, network policies that let only
what must talk talk."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest

from common.healthcheck import probe_port, settings_class
from common.topology import queue_specs
from tests.deploy.netpol import Pod, allowed
from tests.deploy.tools import OVERLAYS, ROOT, objects, rendered

KUBERNETES = "1.30.0"
CRDS = Path(__file__).parent / "crds"
NAMESPACE = "mammothbox"
SERVICES = ("gateway", "embedder", "clusterer", "analyzer", "schemer")
WORKERS = tuple(sorted({spec.service for spec in queue_specs()}))
# Secrets the operators write for the resources of these kinds (name suffix, kind).
OPERATOR_SECRETS = {"-app": "Cluster", "-default-user": "RabbitmqCluster"}


# ---- schema validation


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the published schema, made strict: unknown fields are errors
    where the CRD does not say it keeps them (x-kubernetes-preserve-unknown-fields)."""
    found = {}
    for path in CRDS.glob("*.json"):
        crd = json.loads(path.read_text())
        found[(f"{crd['group']}/{crd['version']}", crd["kind"])] = strict(crd["schema"])
    return found


def strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: strict(v) if k != "enum" else v for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay: str) -> None:
    for obj in rendered(overlay):
        key = (obj["apiVersion"], obj["kind"])
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if key in crd_schemas():
            errors = sorted(
                jsonschema.Draft7Validator(crd_schemas()[key]).iter_errors(obj), key=str
            )
            assert not errors, f"{name}: " + "; ".join(
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
            )
        else:
            try:
                kubernetes_validate.validate(obj, KUBERNETES, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{name}: no schema for {key} (add its CRD to tests/deploy/crds)")
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{name}: {error.message} at {list(error.path)}")


def test_crd_validation_can_fail() -> None:
    scaled = copy.deepcopy(objects("prod", "ScaledObject")["embedder"])
    scaled["spec"]["triggers"][0]["metadata"]["value"] = 64  # metadata values are strings
    scaled["spec"]["minReplicas"] = 1  # not a field of ScaledObject
    schema = crd_schemas()[("keda.sh/v1alpha1", "ScaledObject")]
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(scaled)]
    assert any("64 is not of type 'string'" in m for m in messages), messages
    assert any("minReplicas" in m for m in messages), messages


def test_every_operator_kind_has_its_schema() -> None:
    kinds = {(o["apiVersion"], o["kind"]) for o in rendered("prod")}
    operators = {k for k in kinds if "." in k[0].split("/")[0] and not k[0].endswith("k8s.io/v1")}
    assert operators <= set(crd_schemas()), operators - set(crd_schemas())
    assert {"ScaledObject", "Cluster", "RabbitmqCluster", "ServiceMonitor"} <= {k for _, k in kinds}


# ---- autoscaling


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_worker_scales_on_each_of_its_queues(overlay: str) -> None:
    scaled = objects(overlay, "ScaledObject")
    auth = objects(overlay, "TriggerAuthentication")
    assert set(scaled) == set(WORKERS)
    for worker in WORKERS:
        spec = scaled[worker]["spec"]
        assert spec["scaleTargetRef"]["name"] == worker
        assert worker in objects(overlay, "Deployment")
        queues = [t["metadata"]["queueName"] for t in spec["triggers"]]
        expected = [q.name for q in queue_specs() if q.service == worker]
        assert sorted(queues) == sorted(expected), worker
        for trigger in spec["triggers"]:
            assert trigger["type"] == "rabbitmq"
            assert trigger["metadata"]["protocol"] == "http"
            assert trigger["metadata"]["mode"] == "QueueLength"
            host = trigger["metadata"]["host"]
            assert host.startswith(f"http://mammothbox-mq.{NAMESPACE}.svc:15672"), host
            assert trigger["authenticationRef"]["name"] in auth
    assert len(scaled["clusterer"]["spec"]["triggers"]) == 5
    assert scaled["embedder"]["spec"]["minReplicaCount"] >= 1  # search needs it
    assert scaled["analyzer"]["spec"]["maxReplicaCount"] <= 4  # the VLM quota is the limit


def test_gateway_scales_on_cpu() -> None:
    for overlay in OVERLAYS:
        hpa = objects(overlay, "HorizontalPodAutoscaler")["gateway"]["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "gateway",
        }
        assert hpa["metrics"][0]["resource"]["name"] == "cpu"
        assert "replicas" not in objects(overlay, "Deployment")["gateway"]["spec"]


def test_every_deployment_has_a_disruption_budget() -> None:
    for overlay in OVERLAYS:
        budgets = objects(overlay, "PodDisruptionBudget")
        for name in SERVICES:
            selector = budgets[name]["spec"]["selector"]["matchLabels"]
            assert selector == {"app.kubernetes.io/name": name}


# ---- the Deployments


def reads(service: str) -> set[str]:
    return {name.upper() for name in settings_class(service).model_fields}


def every_service_reads() -> set[str]:
    return set().union(*(reads(service) for service in SERVICES))


def container_env(overlay: str, container: dict[str, Any]) -> dict[str, Any]:
    """A container's variables: each name with where its value comes from."""
    env: dict[str, Any] = {}
    maps = objects(overlay, "ConfigMap")
    for source in container.get("envFrom", []):
        data = maps[source["configMapRef"]["name"]]["data"]
        env |= {k: ("configmap", v) for k, v in data.items()}
    for item in container.get("env", []):
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = ("secret", ref["name"], ref["key"], ref.get("optional", False))
        else:
            env[item["name"]] = ("value", item["value"])
    return env


def listen_port(service: str, env: dict[str, Any]) -> int:
    """The port the service listens on with the container's plain variables."""
    plain = {name: source[-1] for name, source in env.items() if source[0] != "secret"}
    return probe_port(service, plain)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_on_the_port_the_service_listens_on(overlay: str) -> None:
    for name in SERVICES:
        pod = objects(overlay, "Deployment")[name]["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        port = listen_port(name, container_env(overlay, container))
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert port in named.values(), (name, port, named)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            target = container[probe]["httpGet"]
            assert named.get(target["port"], target["port"]) == port, (name, probe)
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/live"
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        service = objects(overlay, "Service")[name]["spec"]
        assert service["selector"] == {"app.kubernetes.io/name": name}
        assert {p["targetPort"] for p in service["ports"]} <= set(named)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_limits_security_context_and_grace(overlay: str) -> None:
    config = next(iter(objects(overlay, "ConfigMap").values()))["data"]
    grace = float(config["SHUTDOWN_GRACE_SECONDS"])
    for name, deployment in objects(overlay, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] >= 10000, name
        assert security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        pause = 0
        for container in pod["containers"] + pod.get("initContainers", []):
            who = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, who
            assert context["readOnlyRootFilesystem"] is True, who
            assert context["capabilities"]["drop"] == ["ALL"], who
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (who, kind)
            stop = container.get("lifecycle", {}).get("preStop", {})
            pause = max(pause, stop.get("sleep", {}).get("seconds", 0))
        assert pod["terminationGracePeriodSeconds"] > grace + pause, name
        assert pod["topologySpreadConstraints"], name


def produced_secrets(overlay: str) -> set[str]:
    """Secrets in the manifests, and those the operators write for the manifests' clusters."""
    names = set(objects(overlay, "Secret"))
    for suffix, kind in OPERATOR_SECRETS.items():
        names |= {f"{name}{suffix}" for name in objects(overlay, kind)}
    return names


def secret_mounted_at(pod: dict[str, Any], container: dict[str, Any], path: str) -> str | None:
    """The secret whose volume holds `path` in the container, if any."""
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            return str(volume.get("secret", {}).get("secretName"))
    return None


def check_store(
    overlay: str, pod: dict[str, Any], container: dict[str, Any], env: dict[str, Any]
) -> None:
    """The content store a pod reaches: the shared claim at STORAGE_PATH, or with S3 a bucket
    and credentials from a secret that exists (and no claim at all)."""
    if env.get("STORAGE_BACKEND", ("", "filesystem"))[-1] != "s3":
        assert mounted_at(pod, container, env["STORAGE_PATH"][-1]) == "mammothbox-storage"
        return
    assert env["S3_BUCKET"][-1], overlay
    assert "mammothbox-storage" not in objects(overlay, "PersistentVolumeClaim")
    assert mounted_at(pod, container, env["STORAGE_PATH"][-1]) is None
    credentials = env["AWS_SHARED_CREDENTIALS_FILE"][-1]
    assert secret_mounted_at(pod, container, credentials) in produced_secrets(overlay)
    assert env["STORAGE_SCRATCH_DIR"][-1].startswith("/tmp/")  # the pod's writable /tmp


def mounted_at(pod: dict[str, Any], container: dict[str, Any], path: str) -> str | None:
    """The claim mounted at `path` in the container, if any."""
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"] == path:
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            return str(volume.get("persistentVolumeClaim", {}).get("claimName"))
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_required_variable_is_set(overlay: str) -> None:
    secrets = produced_secrets(overlay)
    required = {"DATABASE_URL", "RABBITMQ_URL", "API_KEYS"}
    for name in SERVICES:
        pod = objects(overlay, "Deployment")[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = container_env(overlay, container)
        needs = required | ({"STORAGE_PATH"} if name != "schemer" else set())
        needs |= {"MODEL_DIR", "EMBEDDING_MODEL"} if name == "embedder" else set()
        for variable in sorted(needs):
            assert variable in env, (name, variable)
        for variable, source in env.items():
            if source[0] == "secret":
                assert source[1] in secrets, (name, variable, source)
            # Every variable set for the service alone is one it reads (a typo would be
            # ignored without a word); the shared ConfigMap's, one that some service reads.
            readers = reads(name) if source[0] != "configmap" else every_service_reads()
            # OTEL_* and AWS_* are read by the OpenTelemetry SDK and botocore themselves.
            assert variable in readers or variable.startswith(("OTEL_", "AWS_")), (name, variable)
        # The Gemini key reaches the analyzer alone.
        assert ("GEMINI_API_KEY" in env) == (name == "analyzer"), name
        for variable in ("DATABASE_URL", "RABBITMQ_URL", "API_KEYS"):
            assert env[variable][0] == "secret" and not env[variable][3], (name, variable)
        if name != "schemer":
            check_store(overlay, pod, container, env)
        if name == "embedder":
            assert mounted_at(pod, container, env["MODEL_DIR"][-1]) == "mammothbox-models"
        # The migrations run first, from the same settings and secrets.
        migrate = pod["initContainers"][0]
        assert migrate["name"] == "migrate" and migrate["command"][-1] == "scripts/migrate.py"
        migrate_env = container_env(overlay, migrate)
        assert migrate_env["DATABASE_URL"] == env["DATABASE_URL"]
        assert migrate_env["RABBITMQ_URL"] == env["RABBITMQ_URL"]


def test_gpu_component_gives_the_embedder_a_gpu() -> None:
    pod = objects("prod-gpu", "Deployment")["embedder"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("mammothbox/embedder-gpu:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container_env("prod-gpu", container)["ONNX_PROVIDERS"] == ("value", "cuda,cpu")
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    plain = objects("prod", "Deployment")["embedder"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in plain["containers"][0]["resources"]["limits"]


def test_postgres_and_rabbitmq_come_from_their_operators() -> None:
    for overlay in OVERLAYS:
        assert not objects(overlay, "StatefulSet")
        (cluster,) = objects(overlay, "Cluster").values()
        # CloudNativePG's `standard` images carry pgvector; the `minimal` ones do not.
        assert "-standard-" in cluster["spec"]["imageName"]
        assert cluster["spec"]["bootstrap"]["initdb"]["database"] == "file_allocator"
        assert objects(overlay, "RabbitmqCluster")
    assert objects("prod", "Cluster")["mammothbox-db"]["spec"]["instances"] == 3
    assert objects("prod", "RabbitmqCluster")["mammothbox-mq"]["spec"]["replicas"] == 3


def test_prod_is_scraped_through_a_service_monitor() -> None:
    (monitor,) = objects("prod", "ServiceMonitor").values()
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for name in SERVICES:
        service = objects("prod", "Service")[name]
        assert {p["name"] for p in service["spec"]["ports"]} & ports, name
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"


# ---- network policies


def pod_of(overlay: str, name: str) -> Pod:
    labels = objects(overlay, "Deployment")[name]["spec"]["template"]["metadata"]["labels"]
    return Pod(NAMESPACE, labels)


DB = Pod(NAMESPACE, {"cnpg.io/cluster": "mammothbox-db", "cnpg.io/podRole": "instance"})
MQ = Pod(
    NAMESPACE,
    {"app.kubernetes.io/name": "mammothbox-mq", "app.kubernetes.io/component": "rabbitmq"},
)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay: str) -> None:
    policies = list(objects(overlay, "NetworkPolicy").values())
    for name in SERVICES:
        assert allowed(policies, pod_of(overlay, name), DB, 5432), name
        assert allowed(policies, pod_of(overlay, name), MQ, 5672), name
    # Nothing else reaches the database: not another pod here, not another namespace.
    stranger = Pod(NAMESPACE, {"app.kubernetes.io/name": "debug-shell"})
    elsewhere = Pod("default", pod_of(overlay, "gateway").labels)
    for source in (stranger, elsewhere, Pod("monitoring", {"app": "prometheus"})):
        assert not allowed(policies, source, DB, 5432), source
        assert not allowed(policies, source, MQ, 5672), source
    # ... but what the operators need: CloudNativePG's status port and replication,
    # RabbitMQ's clustering, KEDA's and Prometheus' reads.
    operator = Pod("cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"})
    assert allowed(policies, operator, DB, 8000)
    assert not allowed(policies, operator, DB, 5432)
    assert allowed(policies, DB, DB, 5432) and allowed(policies, DB, DB, 8000)
    assert allowed(policies, MQ, MQ, 25672) and allowed(policies, MQ, MQ, 4369)
    assert allowed(policies, MQ, MQ, 35675)
    assert allowed(policies, Pod("keda", {"app": "keda-operator"}), MQ, 15672)
    assert not allowed(policies, Pod("keda", {"app": "other"}), MQ, 15672)
    prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    assert allowed(policies, prometheus, MQ, 15692) and allowed(policies, prometheus, DB, 9187)
    for name in SERVICES:
        port = objects(overlay, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0][
            "ports"
        ][0]["containerPort"]
        assert allowed(policies, prometheus, pod_of(overlay, name), port), name
        if name != "gateway":
            assert not allowed(policies, stranger, pod_of(overlay, name), port), name
    # The nightly backup reaches the database (and mounts the store read-only).
    backup = objects(overlay, "CronJob")["mammothbox-backup"]["spec"]["jobTemplate"]["spec"]
    labels = backup["template"]["metadata"]["labels"]
    assert allowed(policies, Pod(NAMESPACE, labels), DB, 5432)
    # The API is open to whoever reaches the cluster network.
    assert allowed(policies, elsewhere, pod_of(overlay, "gateway"), 8000)


def test_policy_evaluator_can_deny() -> None:
    # With no policy at all, everything is allowed; with only the default deny, nothing.
    assert allowed([], Pod("x", {}), DB, 5432)
    deny = objects("dev", "NetworkPolicy")["default-deny-ingress"]
    assert not allowed([deny], pod_of("dev", "gateway"), DB, 5432)


def test_prod_keeps_content_in_s3_and_dev_on_a_volume() -> None:
    def backend(overlay: str) -> str:
        (config,) = (
            m for name, m in objects(overlay, "ConfigMap").items()
            if name.startswith("mammothbox-config")
        )  # fmt: skip
        return str(config["data"].get("STORAGE_BACKEND", "filesystem"))

    backends = {overlay: backend(overlay) for overlay in OVERLAYS}
    assert backends == {"dev": "filesystem", "prod": "s3", "prod-gpu": "s3"}


def test_docs_name_the_overlays() -> None:
    readme = (ROOT / "deploy/k8s/README.md").read_text()
    for overlay in OVERLAYS:
        assert f"overlays/{overlay}" in readme


def test_nightly_backup_reads_the_database_and_the_store() -> None:
    for overlay in OVERLAYS:
        job = objects(overlay, "CronJob")["mammothbox-backup"]
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].startswith("mammothbox/backup:")
        env = container_env(overlay, container)
        assert env["DATABASE_URL"][:2] == ("secret", "mammothbox-db-app")
        check_store(overlay, pod, container, env)
        assert mounted_at(pod, container, container["args"][-1]) == "mammothbox-backups"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
